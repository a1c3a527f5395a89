"""`crowbar network ...` and `crowbar neutron ...`: the network template, IP allocation, node
interface plans, Neutron tenant networks. Every listing and show takes `-o json`; errors are one
line on stderr and a non-zero exit, like the rest of the CLI.

The commands get the shared Context (endpoint, API client) through click's `pass_obj`, so this
module does not import crowbar.cli.main (which registers these groups).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from crowbar.cli.client import CliError, seg
from crowbar.cli.output import emit_list, emit_object, limit_option, output_option, table_options

NETWORK_COLUMNS = ["id", "name", "category", "subnet", "vlan", "use_vlan", "conduit", "router",
                   "router_pref", "mtu", "ranges", "allocations"]
ALLOCATION_COLUMNS = ["node", "address", "range"]
TENANT_COLUMNS = ["id", "name", "network_type", "physical_network", "segmentation_id", "provider",
                  "bridge"]
PLAN_FORMATS = ["table", "json", "networkd", "netplan", "ifupdown"]
NEUTRON_FILES = ["ml2", "linuxbridge", "dhcp", "l3"]
RERUNS_SHOWN = 20  # noderoles below the re-queued ones, named in a change's text output (-o json: all)


MAX_DOCUMENT_BYTES = 4 << 20  # a network template is a few KiB; the API refuses big bodies anyway
MAX_DOCUMENT_NODES = 100_000  # values after YAML aliases are expanded (a "billion laughs" stops here)
MAX_DOCUMENT_DEPTH = 64  # the API's limit too


def read_document(path: Path, what: str) -> Any:
    """YAML or JSON from a file, or one clear line saying why not: a file that cannot be read,
    is not UTF-8 text, is too big, is not valid YAML, or expands (through aliases) or nests
    beyond what any template needs."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CliError(f"{path}: too big for {what} (more than {MAX_DOCUMENT_BYTES >> 20} MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: cannot read {what}: not UTF-8 text (byte {exc.start})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CliError(f"{path}: not valid YAML or JSON{where}: {problem}") from None
    except RecursionError:
        raise CliError(f"{path}: not {what}: nested too deeply") from None
    _check_size(document, path, what)
    return document


def _check_size(document: Any, path: Path, what: str) -> None:
    """Count the values as sending them would (aliases expanded), stopping at the limits: a
    document that refers to itself or to an alias of an alias of ... is refused, not sent."""
    budget = MAX_DOCUMENT_NODES
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise CliError(f"{path}: not {what}: more than {MAX_DOCUMENT_NODES} values (after YAML aliases)")
        if depth > MAX_DOCUMENT_DEPTH:
            raise CliError(f"{path}: not {what}: nested deeper than {MAX_DOCUMENT_DEPTH} levels (or refers to itself)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _echo_files(files: dict[str, str]) -> None:
    """Each file under a `# path` comment line (a comment in INI, YAML, networkd and ifupdown)."""
    for i, (path, text) in enumerate(files.items()):
        if i:
            click.echo()
        click.echo(f"# {path}")
        click.echo(text.rstrip("\n"))


def _emit_change(result: dict, output: str) -> None:
    """The outcome of an import, create, update or delete: what changed and what it affects."""
    if output == "json":
        emit_object(result, output)
        return
    state = "preview, nothing changed" if result["preview"] else "applied"
    click.echo(f"{result['action']} {result['subject']}: {state}")
    changes = result["changes"]
    for name in changes["added"]:
        click.echo(f"  + network {name}")
    for name in changes["removed"]:
        click.echo(f"  - network {name}")
    for name, fields in changes["changed"].items():
        for change in fields:
            click.echo(f"  ~ {name}.{change['field']}: {change['old']} -> {change['new']}")
    for change in changes["template"]:
        click.echo(f"  ~ template {change['field']}: {change['old']} -> {change['new']}")
    if not any(changes.values()):
        click.echo("  no changes")
    if result["nodes"]:
        click.echo(f"nodes whose interfaces change: {', '.join(result['nodes'])}")
    if result["moves"]:
        verb = "would move" if result["preview"] else "moved"
        click.echo(f"allocations that {verb}:")
        for move in result["moves"]:
            click.echo(f"  {move['network']} {move['node']}: {move['old_address']} -> "
                       f"{move['new_address']} ({move['reason']})")
    if result["released"]:
        verb = "would be released" if result["preview"] else "released"
        click.echo(f"allocations that {verb}:")
        for item in result["released"]:
            click.echo(f"  {item['network']} {item['node']}: {item['address']}")
    if result.get("reruns"):
        verb = "would re-run" if result["preview"] else "re-queued"
        click.echo(f"noderoles that {verb} (their values come from what changed):")
        for item in result["reruns"]:
            click.echo(f"  {item['id']} {item['role']} on {item['node']} in {item['deployment']} "
                       f"({'; '.join(item['because'])})")
    if result.get("reruns_after"):
        shown = result["reruns_after"][:RERUNS_SHOWN]
        click.echo(f"then, below them ({len(result['reruns_after'])}): "
                   + ", ".join(f"{i['id']} {i['role']} on {i['node']}" for i in shown)
                   + (", ..." if len(result["reruns_after"]) > len(shown) else ""))
    if result["preview"] and (result["moves"] or result["released"]):
        click.echo("apply with --force to move or release them")


def _ranges_cell(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        row = dict(row)
        row["ranges"] = "\n".join(f"{name} {r['start']}-{r['end']}" for name, r in row["ranges"].items())
        out.append(row)
    return out


def _parse_range(text: str) -> tuple[str, dict | None]:
    """NAME=START-END, or NAME= to remove the range."""
    name, sep, span = text.partition("=")
    if not sep or not name:
        raise CliError(f"--range {text!r}: expected NAME=START-END (or NAME= to remove it)")
    if not span:
        return name, None
    start, sep, end = span.partition("-")
    if not sep or not start or not end:
        raise CliError(f"--range {text!r}: expected NAME=START-END, e.g. host=10.0.0.10-10.0.0.99")
    return name, {"start": start.strip(), "end": end.strip()}


def network_fields(f):
    """The options of `network create` and `network update` (all optional on the CLI: the
    server says what is missing or wrong)."""
    options = [
        click.option("--file", "from_file", type=click.Path(path_type=Path),
                     help="YAML/JSON mapping of fields (template format); options override it"),
        click.option("--subnet", help="CIDR, e.g. 10.10.0.0/24"),
        click.option("--netmask", help="with a bare --subnet address"),
        click.option("--conduit", help="intf0, intf1, ... or bmc"),
        click.option("--category", help="admin, bmc, storage, public, tenant, ..."),
        click.option("--vlan", type=int),
        click.option("--use-vlan/--no-use-vlan", default=None, help="tag the node's traffic"),
        click.option("--add-bridge/--no-add-bridge", default=None),
        click.option("--mtu", type=int),
        click.option("--router"),
        click.option("--router-pref", type=int, help="lower wins the default route"),
        click.option("--team-mode", type=int, help="bonding mode 0..6"),
        click.option("--use-team/--no-use-team", default=None),
        click.option("--range", "ranges", multiple=True, metavar="NAME=START-END",
                     help="a named range (repeat); NAME= removes it"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _fields_from(options: dict) -> dict:
    data: dict[str, Any] = {}
    from_file = options.pop("from_file", None)
    if from_file is not None:
        loaded = read_document(from_file, "network fields")
        if not isinstance(loaded, dict):
            raise CliError(f"{from_file}: expected a mapping of network fields")
        data.update(loaded)
    ranges = options.pop("ranges", ())
    for key, value in options.items():
        if value is not None:
            data[key] = value
    if ranges:
        data.setdefault("ranges", {})
        for text in ranges:
            name, span = _parse_range(text)
            data["ranges"][name] = span
    return data


def _query(preview: bool, force: bool = False) -> str:
    flags = [name for name, on in (("preview", preview), ("force", force)) if on]
    return ("?" + "&".join(f"{f}=true" for f in flags)) if flags else ""


# -- crowbar network ----------------------------------------------------------------------------
@click.group()
def network() -> None:
    """Networks, IP allocation and node interface plans."""


@network.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--preview", is_flag=True, help="show what it would change and affect; change nothing")
@click.option("--force", is_flag=True, help="re-allocate or release allocations the change invalidates")
@output_option
@click.pass_obj
def network_import(ctx, file: Path, preview: bool, force: bool, output: str) -> None:
    """Replace the network template with FILE (YAML or JSON); networks not in FILE are removed."""
    template = read_document(file, "a network template")
    if not isinstance(template, dict):
        raise CliError(f"{file}: expected a network template (a mapping with networks, conduit_map...)")
    result = ctx.api.request("POST", "/networks/import" + _query(preview, force),
                             json={"template": template}).json()
    _emit_change(result, output)


@network.command("export")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.pass_obj
def network_export(ctx, output: str) -> None:
    """The network template; `crowbar network import` reads it back unchanged."""
    template = ctx.api.get("/networks/export")
    if output == "json":
        click.echo(json.dumps(template, indent=2))
    else:
        click.echo(yaml.safe_dump(template, sort_keys=False).rstrip("\n"))


@network.command("list")
@table_options
@output_option
@click.pass_obj
def network_list(ctx, output: str) -> None:
    """Networks with their subnet, VLAN, conduit, ranges and number of allocations."""
    rows = ctx.api.get("/networks")
    emit_list(rows if output == "json" else _ranges_cell(rows), NETWORK_COLUMNS, output)


@network.command("show")
@click.argument("name")
@output_option
@click.pass_obj
def network_show(ctx, name: str, output: str) -> None:
    """One network, with how much of each range is in use."""
    out = ctx.api.get(f"/networks/{seg(name)}")
    if output != "json":
        out = {k: v for k, v in out.items() if k != "template"}
        out["ranges"] = "\n".join(f"{n} {r['start']}-{r['end']} ({r['used']}/{r['size']} used)"
                                  for n, r in out["ranges"].items())
    emit_object(out, output)


@network.command("create")
@click.argument("name")
@network_fields
@click.option("--preview", is_flag=True, help="validate and show the change; change nothing")
@output_option
@click.pass_obj
def network_create(ctx, name: str, preview: bool, output: str, **options) -> None:
    """Add a network (validated together with the whole template).

    \b
    Example:
      crowbar network create mgmt --subnet 10.20.0.0/24 --conduit intf1 \\
        --vlan 20 --use-vlan --range host=10.20.0.10-10.20.0.200
    """
    body = {**_fields_from(options), "name": name}
    if body.get("ranges"):
        body["ranges"] = {k: v for k, v in body["ranges"].items() if v is not None}
    _emit_change(ctx.api.request("POST", "/networks" + _query(preview), json=body).json(), output)


@network.command("update")
@click.argument("name")
@network_fields
@click.option("--clear", multiple=True, type=click.Choice(["vlan", "router", "router_pref"]),
              help="remove an optional field (repeat)")
@click.option("--preview", is_flag=True, help="show the nodes and allocations it affects; change nothing")
@click.option("--force", is_flag=True, help="re-allocate the allocations the change invalidates")
@output_option
@click.pass_obj
def network_update(ctx, name: str, clear: tuple, preview: bool, force: bool, output: str,
                   **options) -> None:
    """Change a network; ranges are merged by name (--range NAME= removes one)."""
    body = _fields_from(options)
    for field in clear:
        body[field] = None
    if not body:
        raise CliError("nothing to change: give at least one option (see --help)")
    _emit_change(ctx.api.request("PATCH", f"/networks/{seg(name)}" + _query(preview, force), json=body).json(),
                 output)


@network.command("delete")
@click.argument("name")
@click.option("--preview", is_flag=True, help="show the allocations it would release; change nothing")
@click.option("--force", is_flag=True, help="delete even though nodes have addresses on it")
@output_option
@click.pass_obj
def network_delete(ctx, name: str, preview: bool, force: bool, output: str) -> None:
    """Delete a network (nodes with addresses on it need --force: they are released)."""
    _emit_change(ctx.api.request("DELETE", f"/networks/{seg(name)}" + _query(preview, force)).json(), output)


@network.command("allocate")
@click.argument("network_name", metavar="NETWORK")
@click.argument("node")
@click.option("--range", "range_name", help="range to allocate from (default host; falls back to host)")
@click.option("--address", help="the address to try first (used when valid and free)")
@output_option
@click.pass_obj
def network_allocate(ctx, network_name: str, node: str, range_name: str | None, address: str | None,
                     output: str) -> None:
    """Give NODE an address on NETWORK (its existing one if it has one)."""
    body = {"node": node, "range": range_name, "address": address}
    result = ctx.api.request("POST", f"/networks/{seg(network_name)}/allocations", ok=(200, 201),
                             json={k: v for k, v in body.items() if v is not None}).json()
    if output == "json":
        emit_object(result, output)
        return
    verb = "allocated" if result["created"] else "already has"
    click.echo(f"{result['node']} {verb} {result['address']} on {result['network']} "
               f"(range {result['range']})")
    if result.get("note"):
        click.echo(f"note: {result['note']}")


@network.command("allocations")
@table_options
@click.argument("network_name", metavar="NETWORK")
@limit_option
@output_option
@click.pass_obj
def network_allocations(ctx, network_name: str, limit: int | None, output: str) -> None:
    """The addresses allocated on NETWORK, in address order."""
    emit_list(ctx.api.list_all(f"/networks/{seg(network_name)}/allocations", limit), ALLOCATION_COLUMNS, output)


@network.command("release")
@click.argument("network_name", metavar="NETWORK")
@click.argument("node")
@output_option
@click.pass_obj
def network_release(ctx, network_name: str, node: str, output: str) -> None:
    """Give NODE's address on NETWORK back."""
    result = ctx.api.delete(f"/networks/{seg(network_name)}/allocations/{seg(node)}")
    if output == "json":
        emit_object(result, output)
    else:
        click.echo(f"released {result['address']} of {result['node']} on {result['network']}")


@network.command("plan")
@click.argument("node")
@click.option("-o", "--output", type=click.Choice(PLAN_FORMATS), default="table", show_default=True,
              help="table for people, json for scripts, or the OS's network configuration")
@click.pass_obj
def network_plan(ctx, node: str, output: str) -> None:
    """NODE's interfaces (NICs, bonds, VLANs, bridges), addresses and default route."""
    fmt = "json" if output == "table" else output
    plan = ctx.api.get(f"/nodes/{seg(node)}/network_plan", format=fmt)
    if output == "json":
        click.echo(json.dumps(plan, indent=2))
    elif output == "table":
        rows = [{"interface": i["name"], "kind": i["kind"],
                 "on": i["master"] or i["parent"] or ", ".join(i["members"]) or "",
                 "vlan": i["vlan"], "mtu": i["mtu"], "mac": i["mac"],
                 "addresses": ", ".join(i["addresses"]), "networks": ", ".join(i["networks"])}
                for i in plan["interfaces"]]
        emit_list(rows, ["interface", "kind", "on", "vlan", "mtu", "mac", "addresses", "networks"],
                  output, title=f"{plan['node']} ({plan['conduit_map_pattern']})")
        for route in plan["routes"]:
            click.echo(f"route {route['to']} via {route['via']} dev {route['interface']} "
                       f"({route['network']})")
        for name, attachment in plan["attachments"].items():
            if attachment["interface"] is None:
                click.echo(f"{name}: {attachment['address']} on the BMC (configured over IPMI)")
    else:
        _echo_files(plan["files"])


# -- crowbar neutron ----------------------------------------------------------------------------
@click.group()
def neutron() -> None:
    """Neutron (ML2 + Linux Bridge): tenant networks, their segments, device names, settings."""


@neutron.group("networks")
def neutron_networks() -> None:
    """Tenant networks and the VLAN or VXLAN segment each one holds."""


@neutron_networks.command("create")
@click.argument("name")
@click.option("--type", "network_type", type=click.Choice(["vlan", "vxlan"]), default=None,
              help="segment type (default vlan; --vni implies vxlan)")
@click.option("--vlan", type=int, help="explicit VLAN tag (a provider network; inside the range or not)")
@click.option("--vni", type=int, help="explicit VXLAN id")
@click.option("--physnet", help="physical network (default: the configured one, physnet1)")
@click.option("--id", "network_id", help="record a network Neutron already has, by its uuid (nothing is created "
                                          "in Neutron)")
@click.option("--deployment", help="create it in this deployment's Neutron (default: the only one deployed, if any)")
@output_option
@click.pass_obj
def neutron_networks_create(ctx, name: str, network_type: str | None, vlan: int | None,
                            vni: int | None, physnet: str | None, network_id: str | None,
                            deployment: str | None, output: str) -> None:
    """Create a tenant network: the lowest free VLAN (501, 502, ... with the defaults) unless
    --vlan/--vni names one. With Neutron deployed (neutron-server active), the network is also
    created in its live API on that segment, under Neutron's id."""
    if network_id and deployment:
        raise CliError("give --id (a network Neutron already has) or --deployment, not both")
    if vlan is not None and vni is not None:
        raise CliError("give --vlan or --vni, not both")
    network_type = network_type or ("vxlan" if vni is not None else "vlan")
    if network_type == "vlan" and vni is not None or network_type == "vxlan" and vlan is not None:
        raise CliError(f"--type {network_type} does not go with --{'vni' if vni is not None else 'vlan'}")
    body = {"name": name, "network_type": network_type, "physical_network": physnet,
            "segmentation_id": vlan if vlan is not None else vni, "id": network_id, "deployment": deployment}
    result = ctx.api.post("/neutron/networks", {k: v for k, v in body.items() if v is not None})
    emit_object(result, output)


@neutron_networks.command("list")
@table_options
@output_option
@click.pass_obj
def neutron_networks_list(ctx, output: str) -> None:
    """Tenant networks (and the provider fixed network) with their segments."""
    emit_list(ctx.api.list_all("/neutron/networks"), TENANT_COLUMNS, output)


@neutron_networks.command("show")
@click.argument("network_key", metavar="NETWORK")
@output_option
@click.pass_obj
def neutron_networks_show(ctx, network_key: str, output: str) -> None:
    """One tenant network (by id, id prefix or name)."""
    emit_object(ctx.api.get(f"/neutron/networks/{seg(network_key)}"), output)


@neutron_networks.command("delete")
@click.argument("network_key", metavar="NETWORK")
@output_option
@click.pass_obj
def neutron_networks_delete(ctx, network_key: str, output: str) -> None:
    """Delete a tenant network (by id, id prefix or name); its segment returns to the pool."""
    emit_object(ctx.api.delete(f"/neutron/networks/{seg(network_key)}"), output)


@neutron.command("whois")
@click.argument("device")
@click.option("--deployment", help="ask this deployment's Neutron API (default: the only one deployed)")
@click.option("--api", "api_url", metavar="URL", help="ask the Neutron API at URL instead (http://HOST:9696)")
@click.option("--ports", type=click.Path(path_type=Path),
              help="JSON/YAML list of ports (`openstack port list -f json`) for tap/ns-/qr-/qg-, "
                   "instead of the live API")
@click.option("--routers", type=click.Path(path_type=Path), help="JSON/YAML list of routers, likewise")
@output_option
@click.pass_obj
def neutron_whois(ctx, device: str, deployment: str | None, api_url: str | None, ports: Path | None,
                  routers: Path | None, output: str) -> None:
    """Which network, port or router a host device belongs to: brq..., tap..., ns-..., qr-...,
    qg-..., vxlan-N, eth1.501, qdhcp-..., or the older br<uuid> spelling.

    With neutron-server deployed, the server asks its live API (the URL its run published) for
    networks, ports and routers; otherwise it searches the tenant networks Crowbar stores."""
    if (ports or routers) and (deployment or api_url):
        raise CliError("give --ports/--routers, or --deployment/--api to ask a live API, not both")
    if deployment and api_url:
        raise CliError("give --deployment or --api, not both")
    if ports or routers or api_url:
        body: dict[str, Any] = {"device": device}
        if api_url:
            body["api"] = api_url
        for key, path in (("ports", ports), ("routers", routers)):
            if path is not None:
                items = read_document(path, key)
                if not isinstance(items, list):
                    raise CliError(f"{path}: expected a list of {key}")
                body[key] = [{(k.lower().replace(" ", "_") if isinstance(k, str) else k): v for k, v in item.items()}
                             if isinstance(item, dict) else item for item in items]
        result = ctx.api.post("/neutron/whois", body)
    else:
        result = ctx.api.get(f"/neutron/whois/{seg(device)}", deployment=deployment)
    if output == "json":
        emit_object(result, output)
        return
    name = f" {result['name']}" if result.get("name") else ""
    line = f"{result['device']}: {result['kind']}{name} ({result['id']})"
    if result.get("segmentation_id") is not None:
        line += f", {result['network_type']} {result['segmentation_id']}"
    if result.get("network"):
        line += f", on network {result['network'].get('name') or ''} ({result['network']['id']})"
    click.echo(line)


@neutron.command("config")
@click.argument("node")
@click.option("--file", "only", type=click.Choice(NEUTRON_FILES), help="only this file")
@output_option
@click.pass_obj
def neutron_config(ctx, node: str, only: str | None, output: str) -> None:
    """NODE's ml2_conf.ini, linuxbridge_agent.ini, dhcp_agent.ini and l3_agent.ini."""
    result = ctx.api.get(f"/nodes/{seg(node)}/neutron")
    if only:
        suffix = {"ml2": "ml2_conf.ini", "linuxbridge": "linuxbridge_agent.ini",
                  "dhcp": "dhcp_agent.ini", "l3": "l3_agent.ini"}[only]
        result["files"] = {p: t for p, t in result["files"].items() if p.endswith(suffix)}
    if output == "json":
        emit_object(result, output)
    else:
        _echo_files(result["files"])


@neutron.command("settings")
@click.option("--physnet", "physical_network", help="the physical network tenant VLANs live on")
@click.option("--tenant-vlan-count", type=int, help="tenant VLANs after nova_fixed's (default 2000)")
@click.option("--vni-range", "vni_ranges", multiple=True, metavar="MIN:MAX", help="VXLAN ids (repeat)")
@click.option("--tenant-network-types", help="vlan, vxlan or both (comma-separated, in order)")
@output_option
@click.pass_obj
def neutron_settings(ctx, output: str, **changes) -> None:
    """Show the Neutron settings Crowbar derives the configuration from; options change them."""
    body = {k: (list(v) if isinstance(v, tuple) else v) for k, v in changes.items() if v not in (None, ())}
    emit_object(ctx.api.patch("/neutron/settings", body) if body else ctx.api.get("/neutron/settings"),
                output)
