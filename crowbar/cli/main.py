"""The `crowbar` command: every listing and show takes `-o json`; errors are one line, exit 1.

Whatever the input, a command that fails prints exactly one line on stderr (`error: ...`) and
exits non-zero: 1 for an error, 2 for a usage error (and `anneal --wait` timing out), 130 when
interrupted (Ctrl-C). A Python traceback is a bug: `main` still turns an unexpected exception
into one line, and CROWBAR_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import click

from crowbar import config
from crowbar.cli import barclamps as barclamp_upload
from crowbar.cli import local
from crowbar.cli import server_config
from crowbar.cli.client import PAGE, CliError, Client, seg
from crowbar.cli.output import (
    SECONDS,
    confirm,
    confirm_option,
    console,
    emit_list,
    emit_object,
    limit_option,
    output_option,
    plain,
    table_options,
)
from crowbar.cli.portable import COMMANDS as portable_commands
from crowbar.cli.power import COMMANDS as power_commands
from crowbar.cli.proxy import proxy as proxy_group
from crowbar.cli.role_data import role_data
from crowbar.cli.install import install_commands, os_group
from crowbar.cli.os_rules import rules_group

NODE_COLUMNS = ["id", "name", "state", "admin", "alive", "available", "bootenv"]
NODEROLE_COLUMNS = ["id", "deployment", "role", "node", "state", "cohort", "run_count", "status"]


class Context:
    def __init__(self, endpoint: str | None, ca: str | None = None):
        self.endpoint, self.ca = endpoint, ca
        self._client: Client | None = None

    @property
    def api(self) -> Client:
        if self._client is None:
            self._client = Client(self.endpoint, **({"ca": self.ca} if self.ca else {}))
        return self._client


pass_ctx = click.make_pass_decorator(Context)


class Interrupted(Exception):
    """Ctrl-C while a command ran: `main` prints one line and exits 130."""


class CrowbarGroup(click.Group):
    """The top-level group: Ctrl-C inside a command becomes Interrupted, which click passes through
    untouched (it would print an empty line for a KeyboardInterrupt, then Abort)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            client = ctx.obj._client if isinstance(ctx.obj, Context) else None
            sending = client.sending if client is not None else None
            if sending and not sending.startswith("GET "):
                raise Interrupted(f"interrupted during {sending}: the server may still carry it out; "
                                  "check before running it again") from None
            raise Interrupted("interrupted") from None


@click.group(cls=CrowbarGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar="CROWBAR_ENDPOINT", help=f"API URL (default http://{config.DEFAULT_LISTEN})")
@click.option("--ca", envvar="CROWBAR_CA", help="PEM file of the CA that signed an https:// server's certificate "
                                                "(default: the system's CAs)")
@click.version_option(package_name="crowbar")
@click.pass_context
def cli(ctx: click.Context, endpoint: str | None, ca: str | None) -> None:
    """Crowbar: bare-metal provisioning and orchestration."""
    ctx.obj = Context(endpoint, ca)


# -- server and database -------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), envvar="CROWBAR_CONFIG",
              help="TOML file with any of these settings (the command line and environment win over it)")
@click.option("--listen", multiple=True, default=[config.DEFAULT_LISTEN], show_default=True,
              help="HOST:PORT or unix:PATH to serve the API on (repeatable)")
@click.option("--database", envvar="CROWBAR_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the data dir)")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 256), help="annealer worker threads")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="CROWBAR_DATA_DIR", help="state directory")
@click.option("--provision", metavar="INTERFACE=ADDRESS",
              help="run DHCP/TFTP/HTTP boot on the admin network through INTERFACE, whose address is ADDRESS")
@click.option("--advertise-url", help="URL booting machines use to reach the API (default http://ADDRESS:PORT)")
@click.option("--domain", help="DNS domain of discovered nodes (default crowbar.local)")
@click.option("--provision-only-on", "provision_only_on", multiple=True, metavar="LISTEN",
              help="serve /boot, discovery and the agent's routes only on this --listen value (repeatable; "
                   "default with --provision: the listeners on its ADDRESS)")
@click.option("--approve-discovered", is_flag=True,
              help="new machines wait in `pending` until `crowbar nodes approve`")
@click.option("--discovery-rate", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="new nodes per second that discovery may create (sustained)")
@click.option("--discovery-burst", type=click.IntRange(min=1), default=50, show_default=True,
              help="new nodes that discovery may create at once")
@click.option("--os-images", type=click.Path(path_type=Path), envvar="CROWBAR_OS_IMAGES",
              help="OS image store served to installing nodes (default: <cache dir>/os, where `crowbar os build` writes)")
@click.option("--proxies", is_flag=True,
              help="run the caching proxies for the nodes (apt-cacher-ng, devpi-server, git daemon) on the "
                   "admin address and loopback; docs/online-mode.md")
@click.option("--proxy-apt-upstream", metavar="URL",
              help="Debian mirror behind the apt proxy (default: the one this host's apt uses)")
@click.option("--proxy-pypi-upstream", metavar="URL", help="simple index behind the PyPI cache (default pypi.org)")
@click.option("--proxy-ports", metavar="APT,PYPI,GIT", help="the proxies' ports (default 3142,3141,9418)")
@click.option("--proxy-via", metavar="URL",
              help="an HTTP proxy (http://HOST:PORT) the proxies fetch their upstreams through, when the "
                   "admin server has no direct way out")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="PEM certificate (chain): the API serves HTTPS")
@click.option("--tls-key", type=click.Path(path_type=Path), help="PEM private key of --tls-cert")
@click.option("--allow-http", is_flag=True,
              help="serve the API in clear on addresses other than loopback (tokens cross the network unencrypted)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="a log line per request")
@click.option("--full-collection-every", type=click.FloatRange(min=0), default=600.0, show_default=True,
              metavar="SECONDS", help="seconds between the garbage collector's full passes, which stop the "
                                      "server while they run (0: Python's own rule; docs/scaling.md)")
@click.pass_context
def server(ctx: click.Context, config_file: Path | None, **settings) -> None:
    """Run the API server and the annealer (and the provisioner with --provision).

    Settings come from the command line, then the environment, then the --config file."""
    if ctx.invoked_subcommand is not None:
        return
    if config_file is not None:
        settings |= server_config.read(ctx, config_file)
    try:
        local.serve(list(settings.pop("listen")), settings.pop("database"), settings.pop("workers"),
                    settings.pop("data_dir"), settings.pop("provision"), settings.pop("advertise_url"),
                    settings.pop("domain"), provision_only_on=list(settings.pop("provision_only_on")),
                    **{k: str(v) if isinstance(v, Path) else v for k, v in settings.items()})
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(os_error(exc)) from None


server_config.add_commands(server)


@cli.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--database", envvar="CROWBAR_DATABASE_URL")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="CROWBAR_DATA_DIR")
def db_upgrade(database: str | None, data_dir: Path | None) -> None:
    """Apply every pending migration (the server also does this when it starts).

    Creates no directory but the data directory, and that only for the default database in it."""
    try:
        if database is None:
            data_dir = config.make_data_dir(data_dir)
        before, after = local.upgrade_database(config.database_url(database, data_dir))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"schema at revision {after}" + (f" (was {before or 'empty'})" if before != after else " (up to date)"))


def _database_url(database: str | None, data_dir: Path | None) -> str:
    try:
        if database is None:
            data_dir = config.make_data_dir(data_dir)
        return config.database_url(database, data_dir)
    except ValueError as exc:
        raise CliError(str(exc)) from None


@db.command("backup")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--database", envvar="CROWBAR_DATABASE_URL")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="CROWBAR_DATA_DIR")
def db_backup(file: Path, database: str | None, data_dir: Path | None) -> None:
    """Copy the whole database to FILE while the server runs (SQLite: the online backup API;
    PostgreSQL: pg_dump). FILE holds token hashes: it is written readable by its owner only."""
    size = local.backup_database(_database_url(database, data_dir), file)
    click.echo(f"backed up to {file} ({size} bytes)")


@db.command("restore")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--database", envvar="CROWBAR_DATABASE_URL")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="CROWBAR_DATA_DIR")
@click.option("--force", is_flag=True, help="even if a server's heartbeat says it uses the database")
@confirm_option
def db_restore(file: Path, database: str | None, data_dir: Path | None, force: bool, yes: bool) -> None:
    """Replace everything in the database with the backup in FILE, then migrate it to this
    Crowbar's schema. Stop the server first."""
    url = _database_url(database, data_dir)
    confirm(f"replace everything in the database with {file}?", yes)
    revision = local.restore_database(url, file, force=force)
    click.echo(f"restored {file}; schema at revision {revision}")


# -- barclamps and roles -------------------------------------------------------------------------
@cli.group()
def barclamps() -> None:
    """Modules of roles."""


@barclamps.command("list")
@table_options
@limit_option
@output_option
@pass_ctx
def barclamps_list(ctx: Context, limit: int | None, output: str) -> None:
    rows = sorted(ctx.api.list_all("/barclamps", limit), key=lambda b: b["name"])
    emit_list(rows, ["id", "name", "version", "roles", "description"], output)


@barclamps.command("show")
@click.argument("barclamp")
@output_option
@pass_ctx
def barclamps_show(ctx: Context, barclamp: str, output: str) -> None:
    emit_object(ctx.api.get(f"/barclamps/{seg(barclamp)}"), output)


@barclamps.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@output_option
@pass_ctx
def barclamps_import(ctx: Context, path: Path, output: str) -> None:
    """Validate and load a barclamp directory (barclamp.yml and scripts/)."""
    if not path.exists():
        raise CliError(f"{path}: no such file or directory")
    directory = path if path.is_dir() else path.parent
    source = str(directory.resolve())
    body = barclamp_upload.upload_body(barclamp_upload.files_of(directory), source)
    result = ctx.api.request("POST", "/barclamps", content=body, headers={"content-type": "application/json"}).json()
    emit_object(result, output)


@cli.group()
def roles() -> None:
    """Roles that barclamps provide."""


@roles.command("list")
@table_options
@click.option("--barclamp")
@limit_option
@output_option
@pass_ctx
def roles_list(ctx: Context, barclamp: str | None, limit: int | None, output: str) -> None:
    emit_list(ctx.api.list_all("/roles", limit, barclamp=barclamp), ["id", "name", "barclamp", "jig", "requires", "flags"],
              output)


@roles.command("show")
@click.argument("role")
@output_option
@pass_ctx
def roles_show(ctx: Context, role: str, output: str) -> None:
    emit_object(ctx.api.get(f"/roles/{seg(role)}"), output)


# -- nodes ---------------------------------------------------------------------------------------
@cli.group()
def nodes() -> None:
    """Machines Crowbar manages."""


@nodes.command("list")
@table_options
@click.option("--state", help="only nodes in this lifecycle state (see `crowbar nodes states`)")
@click.option("--name", help="only nodes whose name starts with this")
@click.option("--tag", help="only nodes with this tag (given by the OS rules or the `tags` attrib)")
@limit_option
@output_option
@pass_ctx
def nodes_list(ctx: Context, state: str | None, name: str | None, tag: str | None, limit: int | None,
               output: str) -> None:
    emit_list(ctx.api.list_all("/nodes", limit, state=state, name=name, tag=tag), NODE_COLUMNS + ["tags"], output)


@nodes.command("show")
@click.argument("node")
@output_option
@pass_ctx
def nodes_show(ctx: Context, node: str, output: str) -> None:
    """The node (the table ends with its ETag, for `nodes update --if-match`)."""
    shown, etag = ctx.api.read(f"/nodes/{seg(node)}")
    emit_object(shown if output == "json" else shown | {"etag": etag}, output)


@nodes.command("create")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--admin", is_flag=True, help="this is the admin server (gets the bootstrap roles)")
@click.option("--dead", is_flag=True, help="not alive yet: nothing runs on it until it is marked alive")
@click.option("--reserved", is_flag=True, help="not available: nothing runs on it until released")
@click.option("--description", default="")
@output_option
@pass_ctx
def nodes_create(ctx: Context, names: tuple[str, ...], admin: bool, dead: bool, reserved: bool, description: str,
                 output: str) -> None:
    """Create nodes by name; several are created in one request and one transaction (all or none)."""
    fields = {"admin": admin, "alive": not dead, "available": not reserved, "description": description}
    if len(names) == 1:
        emit_object(ctx.api.post("/nodes", {"name": names[0], **fields}), output)
        return
    emit_list(ctx.api.post("/nodes/batch", {"nodes": [{"name": name, **fields} for name in names]})["items"],
              NODE_COLUMNS, output)


@nodes.command("register")
@click.argument("macs", metavar="MAC...", nargs=-1, required=True)
@click.option("--name", help="host name (default: the name discovery gives it, from the first MAC)")
@output_option
@pass_ctx
def nodes_register(ctx: Context, macs: tuple[str, ...], name: str | None, output: str) -> None:
    """Register one machine by its MACs before it boots (the first is the MAC it PXE-boots from):
    a node in `discovering`; when the machine boots, discovery finds it by MAC."""
    node = ctx.api.post("/nodes/register", {"macs": list(macs), "name": name})
    if output == "json":
        emit_object(node, output)
        return
    console.print(plain(f"node {node['name']} (id {node['id']}) registered: {node['state']}, boots the discovery "
                        f"image from {node['boot_mac']}. Power it on (crowbar nodes set-power, crowbar nodes power "
                        f"{node['name']} on) or start it by hand: it must boot within the state's timeout "
                        "(crowbar nodes states)."))


@nodes.command("update")
@click.argument("node")
@click.option("--alive/--dead", default=None)
@click.option("--available/--reserved", default=None)
@click.option("--description")
@click.option("--if-match", help="change it only if its ETag is still this (`nodes show` prints it)")
@output_option
@pass_ctx
def nodes_update(ctx: Context, node: str, alive: bool | None, available: bool | None, description: str | None,
                 if_match: str | None, output: str) -> None:
    """Mark a node alive or dead, available or reserved; set its description."""
    emit_object(ctx.api.patch(f"/nodes/{seg(node)}", {"alive": alive, "available": available,
                                                      "description": description}, if_match=if_match), output)


@nodes.command("delete")
@click.argument("node")
@click.option("--if-match", help="delete it only if its ETag is still this (`nodes show` prints it)")
@confirm_option
@output_option
@pass_ctx
def nodes_delete(ctx: Context, node: str, if_match: str | None, yes: bool, output: str) -> None:
    """Delete a node (asks first on a terminal; --yes does not)."""
    confirm(f"delete node {node!r}?", yes)
    emit_object(ctx.api.delete(f"/nodes/{seg(node)}", if_match=if_match), output)


def _post_action(collection: str, action: str):
    """A command `<collection> ACTION KEY` that POSTs to /<collection>/KEY/<action> and shows the answer."""
    @click.argument("key", metavar=collection.rstrip("s").upper())
    @output_option
    @pass_ctx
    def command(ctx: Context, key: str, output: str) -> None:
        emit_object(ctx.api.post(f"/{collection}/{seg(key)}/{action}"), output)

    return command


@nodes.command("allocate")
@click.argument("node_keys", metavar="NODE...", nargs=-1, required=True)
@output_option
@pass_ctx
def nodes_allocate(ctx: Context, node_keys: tuple[str, ...], output: str) -> None:
    """Take discovered nodes into service (reserves their admin addresses); several are allocated in
    one request and one transaction (all or none)."""
    if len(node_keys) == 1:
        emit_object(ctx.api.post(f"/nodes/{seg(node_keys[0])}/allocate"), output)
        return
    emit_list(ctx.api.post("/nodes/allocate", {"nodes": list(node_keys)})["items"], NODE_COLUMNS + ["admin_address"],
              output)


@nodes.command("approve")
@click.argument("node_keys", metavar="NODE...", nargs=-1, required=True)
@output_option
@pass_ctx
def nodes_approve(ctx: Context, node_keys: tuple[str, ...], output: str) -> None:
    """Accept newly discovered machines that wait in `pending` (server --approve-discovered)."""
    approved, failed = [], []
    for key in node_keys:
        try:
            approved.append(ctx.api.post(f"/nodes/{seg(key)}/approve"))
        except CliError as exc:
            failed.append(f"{key}: {exc}")
    emit_list(approved, NODE_COLUMNS, output)
    if failed:
        raise CliError(f"not approved: {'; '.join(failed)}")


nodes.command("reset", help="Send the node back to discovery.")(_post_action("nodes", "reset"))


for _command in power_commands:  # nodes power | power-requests | set-power | power-drivers
    nodes.add_command(_command)
for _command in install_commands:  # nodes deploy | reinstall | release | ssh
    nodes.add_command(_command)


@nodes.command("states")
@table_options
@click.option("--dot", is_flag=True, help="the diagram as Graphviz dot, drawn from the transition table")
@output_option
@pass_ctx
def nodes_states(ctx: Context, dot: bool, output: str) -> None:
    """The node lifecycle: states, where each may go next, what each boots."""
    if dot:
        click.echo(ctx.api.request("GET", "/node_states", params={"format": "dot"}, text=True).text)
        return
    rows = [{"state": st, "next": s["next"], "bootenv": s["bootenv"],
             "timeout": str(timedelta(minutes=s["timeout_minutes"])) if s["timeout_minutes"] is not None else ""}
            for st, s in ctx.api.get("/node_states").items()]
    emit_list(rows, ["state", "next", "bootenv", "timeout"], output)


# -- deployments ---------------------------------------------------------------------------------
@cli.group()
def deployments() -> None:
    """Groups of noderoles committed and annealed together."""


@deployments.command("list")
@table_options
@limit_option
@output_option
@pass_ctx
def deployments_list(ctx: Context, limit: int | None, output: str) -> None:
    emit_list(ctx.api.list_all("/deployments", limit), ["id", "name", "parent", "state", "status", "noderoles"], output)


@deployments.command("show")
@click.argument("deployment")
@output_option
@pass_ctx
def deployments_show(ctx: Context, deployment: str, output: str) -> None:
    emit_object(ctx.api.get(f"/deployments/{seg(deployment)}"), output)


@deployments.command("create")
@click.argument("name")
@click.option("--parent", help="parent deployment (default: system)")
@click.option("--description", default="")
@output_option
@pass_ctx
def deployments_create(ctx: Context, name: str, parent: str | None, description: str, output: str) -> None:
    emit_object(ctx.api.post("/deployments", {"name": name, "parent": parent, "description": description}), output)


@deployments.command("bind")
@click.argument("deployment")
@click.argument("role")
@click.argument("node_keys", metavar="[NODE]...", nargs=-1)
@click.option("--tag", help="every node with this tag (`nodes list --tag`); remembered: a commit binds the nodes "
                            "that gained it since")
@output_option
@pass_ctx
def deployments_bind(ctx: Context, deployment: str, role: str, node_keys: tuple[str, ...], tag: str | None,
                     output: str) -> None:
    """Bind ROLE to each NODE, or to every node tagged --tag, in DEPLOYMENT (and whatever the role
    requires): in one transaction, all of them or none."""
    if bool(node_keys) == (tag is not None):
        raise click.UsageError("name the nodes, or --tag TAG (not both)")
    body = {"role": role, "tag": tag} if tag is not None else \
        {"role": role, "node": node_keys[0]} if len(node_keys) == 1 else {"role": role, "nodes": list(node_keys)}
    result = ctx.api.post(f"/deployments/{seg(deployment)}/bind", body)
    if output == "json":
        emit_object(result, output)
        return
    for nr in result["noderoles"]:
        console.print(plain(f"noderole {nr['id']}: {nr['role']} on {nr['node']} in {nr['deployment']} ({nr['state']})"))
    by_tag = f"; tag {result['tag']} is remembered: a commit binds the nodes that gain it" if tag is not None else ""
    console.print(plain(f"{len(result['created'])} noderoles created{by_tag}"))
    if result["reopened"]:
        console.print(plain(f"deployment {deployment} was committed and is proposed again: "
                            "commit it to run the new noderoles"))


deployments.add_command(role_data)
deployments.command("commit", help="Commit a deployment: its noderoles become runnable.")(
    _post_action("deployments", "commit"))
deployments.command("propose", help="Reopen a deployment for changes.")(_post_action("deployments", "propose"))


for _command in portable_commands["deployments"]:  # deployments export | import
    deployments.add_command(_command)


@deployments.command("delete")
@click.argument("deployment")
@confirm_option
@output_option
@pass_ctx
def deployments_delete(ctx: Context, deployment: str, yes: bool, output: str) -> None:
    """Delete a deployment (asks first on a terminal; --yes does not)."""
    confirm(f"delete deployment {deployment!r}?", yes)
    emit_object(ctx.api.delete(f"/deployments/{seg(deployment)}"), output)


# -- noderoles -----------------------------------------------------------------------------------
@cli.group()
def noderoles() -> None:
    """Roles bound to nodes: the graph the annealer walks."""


@noderoles.command("list")
@table_options
@click.option("--deployment")
@click.option("--node")
@click.option("--role")
@click.option("--state", help="proposed, todo, transition, active, error, blocked")
@limit_option
@output_option
@pass_ctx
def noderoles_list(ctx: Context, deployment, node, role, state, limit: int | None, output: str) -> None:
    """NodeRoles in the order they run (cohort, then id)."""
    rows = ctx.api.list_all("/node_roles", limit, deployment=deployment, node=node, role=role, state=state)
    emit_list(sorted(rows, key=lambda r: (r["cohort"], r["id"])), NODEROLE_COLUMNS, output)


@noderoles.command("show")
@click.argument("noderole")
@output_option
@pass_ctx
def noderoles_show(ctx: Context, noderole: str, output: str) -> None:
    emit_object(ctx.api.get(f"/node_roles/{seg(noderole)}"), output)


@noderoles.command("retry")
@click.argument("noderole")
@output_option
@pass_ctx
def noderoles_retry(ctx: Context, noderole: str, output: str) -> None:
    emit_object(ctx.api.post(f"/node_roles/{seg(noderole)}/retry"), output)


@noderoles.command("parents")
@table_options
@click.argument("noderole")
@output_option
@pass_ctx
def noderoles_parents(ctx: Context, noderole: str, output: str) -> None:
    emit_list(ctx.api.list_all(f"/node_roles/{seg(noderole)}/parents"), NODEROLE_COLUMNS, output)


@noderoles.command("children")
@table_options
@click.argument("noderole")
@output_option
@pass_ctx
def noderoles_children(ctx: Context, noderole: str, output: str) -> None:
    emit_list(ctx.api.list_all(f"/node_roles/{seg(noderole)}/children"), NODEROLE_COLUMNS, output)


@noderoles.command("log")
@click.argument("noderole")
@click.option("--all", "all_runs", is_flag=True, help="every run, not only the last")
@click.option("--follow", "-f", is_flag=True, help="while the last run goes, print its log as it grows")
@output_option
@pass_ctx
def noderoles_log(ctx: Context, noderole: str, all_runs: bool, follow: bool, output: str) -> None:
    """The log of the noderole's last run (or of all its runs)."""
    if follow and output != "json":
        _follow_log(ctx, noderole)
        return
    runs = ctx.api.list_all(f"/node_roles/{seg(noderole)}/runs")
    if not all_runs:
        runs = runs[-1:]
    if output == "json":
        emit_list(runs, [], output)
        return
    if not runs:
        console.print(plain(f"noderole {noderole} has not run yet"))
    for run in runs:
        click.echo(f"--- run {run['id']} ({run['state']}, started {run['started_at']})")
        click.echo(run["log"].rstrip("\n"))


def _follow_log(ctx: Context, noderole: str, interval: float = 1.0) -> None:
    """Print the last run's log, then what is added to it, until that run is no longer running."""
    shown_run, printed = None, 0
    while True:
        runs = ctx.api.list_all(f"/node_roles/{seg(noderole)}/runs")
        run = runs[-1] if runs else None
        if run is not None:
            if run["id"] != shown_run:
                click.echo(f"--- run {run['id']} ({run['state']}, started {run['started_at']})")
                shown_run, printed = run["id"], 0
            if len(run["log"]) < printed:  # the final log replaced the streamed one: print it whole
                click.echo("--- the run's final log")
                printed = 0
            click.echo(run["log"][printed:], nl=False)
            printed = len(run["log"])
            if run["state"] != "running":
                return
        time.sleep(interval)


# -- attribs -------------------------------------------------------------------------------------
@cli.group()
def attribs() -> None:
    """Named values at paths in the JSON a run receives."""


@attribs.command("list")
@table_options
@limit_option
@output_option
@pass_ctx
def attribs_list(ctx: Context, limit: int | None, output: str) -> None:
    rows = sorted(ctx.api.list_all("/attribs", limit), key=lambda a: a["name"])
    emit_list(rows, ["id", "name", "map", "role", "default"], output)


@attribs.command("get")
@click.argument("name")
@click.option("--node")
@output_option
@pass_ctx
def attribs_get(ctx: Context, name: str, node: str | None, output: str) -> None:
    emit_object(ctx.api.get(f"/attribs/{seg(name)}", node=node), output)


@attribs.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
@click.argument("name")
@click.argument("value")
@click.option("--node", required=True)
@output_option
@pass_ctx
def attribs_set(ctx: Context, name: str, value: str, node: str, output: str) -> None:
    """Set an attrib on a node; VALUE is JSON when it parses, else a string."""
    emit_object(ctx.api.put(f"/attribs/{seg(name)}", {"node": node, "value": value}), output)


# -- anneal and events ---------------------------------------------------------------------------
EXIT = {"finished": 0, "failed": 1}


def _summary(status: dict) -> str:
    c = status["counts"]
    return (f"{c['active']} active, {c['todo']} todo, {c['transition']} running, {c['blocked']} blocked, "
            f"{c['error']} error")


def _print_waits(status: dict, limit: int = 20) -> None:
    """What the waiting noderoles wait on (an error, a dead or reserved node), one line each."""
    waits = status.get("waiting") or []
    for w in waits[:limit]:
        console.print(plain(f"  noderole {w['noderole']} ({w['deployment']}, {w['role']}) on {w['node']}: {w['reason']}"))
    if len(waits) > limit:
        console.print(plain(f"  ... and more: `crowbar anneal -o json` lists the first {len(waits)}"))


@cli.command()
@click.option("--wait", is_flag=True, help="wait, with progress, until finished or failed")
@click.option("--timeout", type=SECONDS, default=3600, show_default=True, help="seconds to wait")
@click.option("--deployment")
@output_option
@pass_ctx
def anneal(ctx: Context, wait: bool, timeout: float, deployment: str | None, output: str) -> None:
    """The annealer's status (it runs in the server, whenever there is work), and what waiting
    noderoles wait on; exit 0 finished, 1 failed, 2 timed out (with --wait).

    With --wait: a live bar on a terminal, else a plain line whenever the counts change."""
    def fetch() -> dict:
        return ctx.api.request("GET", "/anneal", ok=(200, 202, 409),
                               params={"deployment": deployment} if deployment else {}).json()

    status = fetch()
    if wait and status["status"] == "working":
        deadline = time.monotonic() + timeout
        if console.is_terminal and output != "json":
            status = _wait_with_bar(fetch, status, deadline)
        else:  # a log, a CI job, a pipe: plain lines, when something changed (and each minute)
            started, last, last_at = time.monotonic(), None, 0.0
            while True:
                line = f"annealing: {status['counts']['active']}/{status['total']} active; {_summary(status)}"
                if line != last or time.monotonic() - last_at >= 60:
                    click.echo(f"{line} ({time.monotonic() - started:.0f}s)", err=output == "json")
                    last, last_at = line, time.monotonic()
                if status["status"] != "working" or time.monotonic() >= deadline:
                    break
                time.sleep(1.0)
                status = fetch()
    if output == "json":
        emit_object(status, output)
    else:
        console.print(f"anneal {status['status']}: {_summary(status)}")
        if status.get("waiting_on_unavailable_nodes"):
            console.print(f"{status['waiting_on_unavailable_nodes']} noderoles wait for nodes that are dead or reserved")
        if status.get("waiting"):
            console.print("waiting, and on what:")
            _print_waits(status)
        if status["status"] == "working" and not wait:
            scope = f" --deployment {deployment}" if deployment else ""
            console.print(plain(f"the server is annealing ({status['counts']['todo'] + status['counts']['transition']} "
                                f"noderoles to run): watch it with `crowbar anneal --wait{scope}` or "
                                "`crowbar noderoles list --state transition`"))
    if status["status"] == "working":
        if wait:
            raise CliError(f"anneal still working after {timeout:g}s: {_summary(status)}", code=2)
        sys.exit(0)
    sys.exit(EXIT[status["status"]])


def _wait_with_bar(fetch, status: dict, deadline: float) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # slow import: only here

    with Progress(TextColumn("[bold]annealing"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(_summary(status), total=max(status["total"], 1), completed=status["counts"]["active"])
        while status["status"] == "working" and time.monotonic() < deadline:
            time.sleep(0.3)
            status = fetch()
            bar.update(task, total=max(status["total"], 1), completed=status["counts"]["active"],
                       description=_summary(status))
    return status


@cli.command()
@table_options
@click.option("--type", "object_type", help="node, noderole, deployment, barclamp, ...")
@click.option("--id", "object_id", type=int)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="the newest this many")
@output_option
@pass_ctx
def events(ctx: Context, object_type: str | None, object_id: int | None, limit: int, output: str) -> None:
    """The audit trail: who changed what, when, from and to (oldest first)."""
    if limit <= PAGE:  # the API's tail: the newest `limit` events
        rows = ctx.api.get("/events", object_type=object_type, object_id=object_id, limit=limit)["items"]
    else:  # more than one page: read the log forward and keep its end
        rows = ctx.api.list_all("/events", object_type=object_type, object_id=object_id, marker=0)[-limit:]
    emit_list(rows, ["id", "at", "actor", "object_type", "object_id", "action", "from", "to", "message"], output)


from crowbar.cli.network import network, neutron  # noqa: E402  (registered here, defined there)

@cli.group()
def images() -> None:
    """Boot images the provisioner serves."""


@images.command("build-discovery")
@click.option("--kernel", "kernel_version", help="kernel version (default: the newest with modules installed)")
@click.option("--cache", type=click.Path(path_type=Path), help="image cache (default: <data dir>/images)")
@output_option
def images_build_discovery(kernel_version: str | None, cache: Path | None, output: str) -> None:
    """Build the discovery kernel + initramfs from this machine's packages (cached by content)."""
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=console, transient=True) as bar:
        task = bar.add_task("building", total=1)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=max(total, 1))

        try:
            image = local.build_discovery_image(cache or config.data_dir() / "images", kernel_version, progress)
        except OSError as exc:
            raise CliError(str(exc)) from None
    emit_object({"kernel": str(image.kernel), "initrd": str(image.initrd), "digest": image.digest,
                 "initrd_bytes": image.initrd.stat().st_size}, output)


cli.add_command(network)
for _command in portable_commands["cli"]:  # export | import | inventory ansible
    cli.add_command(_command)
cli.add_command(neutron)
os_group.add_command(rules_group)  # crowbar os rules ...
cli.add_command(os_group)
cli.add_command(proxy_group)

from crowbar.cli.users import COMMANDS as user_commands  # noqa: E402

for _command in user_commands:  # users | tokens | whoami
    cli.add_command(_command)

from crowbar.lab.cli import lab_group  # noqa: E402

cli.add_command(lab_group)


NO_COMMAND = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2; before, the help and exit 0
MAX_LINE = 2000  # an error line longer than this is cut in the middle


def one_line(message: str) -> str:
    """The message on one line (whatever the server said), at most MAX_LINE characters, with
    control characters (a terminal's escape sequences) and undecodable bytes shown as escapes."""
    line = " ".join(str(message).split())
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    if len(line) > MAX_LINE:
        line = f"{line[:MAX_LINE - 400]} [... {len(line) - MAX_LINE + 100} characters ...] {line[-300:]}"
    return line


def os_error(exc: OSError) -> str:
    """An OSError as `PATH: reason`."""
    if exc.filename is not None and exc.strerror:
        return f"{os.fsdecode(exc.filename)}: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def main() -> None:
    """The `crowbar` entry point: one line on stderr and a non-zero exit for every failure."""
    for stream in (sys.stdout, sys.stderr):  # text the terminal's encoding cannot show: escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        cli(standalone_mode=False)
    except CliError as exc:
        _fail(str(exc), exc.code)
    except (Interrupted, KeyboardInterrupt, click.exceptions.Abort) as exc:
        _fail(str(exc) if isinstance(exc, Interrupted) else "interrupted", 130)
    except NO_COMMAND as exc:  # `crowbar nodes`: which one? (not the whole help as an error)
        group = exc.ctx.command
        names = ", ".join(group.list_commands(exc.ctx)) if isinstance(group, click.Group) else ""
        _fail(f"{exc.ctx.command_path}: give a command ({names}); see {exc.ctx.command_path} --help", 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line, and the way to see the traceback
        if os.environ.get("CROWBAR_DEBUG", "") not in ("", "0"):
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (a bug in crowbar; run with CROWBAR_DEBUG=1 to see the "
              "traceback)", 1)


if __name__ == "__main__":
    main()
