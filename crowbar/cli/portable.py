"""`crowbar deployments export|import`, `crowbar export|import` and `crowbar inventory ansible`:
documents in and out (crowbar.services.portable on the server)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from crowbar.cli.client import CliError, seg
from crowbar.cli.output import console, emit_object, plain

document_file = click.argument("file", type=click.Path(path_type=Path, allow_dash=True))
result_format = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
doc_format = click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
                          help="document format")

target_file = click.option("--file", "target", type=click.Path(path_type=Path), help="write here instead of stdout")


def export_options(command):
    return doc_format(target_file(command))


def _write(doc: dict, output: str, target: Path | None) -> None:
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n" if output == "json" else \
        yaml.safe_dump(doc, sort_keys=True, allow_unicode=True)
    if target is None:
        click.echo(text, nl=False)
    else:
        try:
            target.write_text(text)
        except OSError as exc:
            raise CliError(f"{target}: {exc.strerror}") from None


def _read(path: Path) -> dict:
    """A document from a YAML or JSON file (JSON is YAML); '-' reads stdin."""
    try:
        text = click.get_text_stream("stdin").read() if str(path) == "-" else path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not YAML or JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: not a Crowbar document (a mapping with 'format')")
    return doc


@click.command("export")
@click.argument("deployment")
@export_options
@click.pass_obj
def deployments_export(ctx, deployment: str, output: str, target: Path | None) -> None:
    """The deployment as a portable document (for `crowbar deployments import`)."""
    _write(ctx.api.get(f"/deployments/{seg(deployment)}/export"), output, target)


def import_command(flag):
    """`import FILE` with its one flag and -o table|json."""
    return lambda f: click.command("import")(document_file(flag(result_format(click.pass_obj(f)))))


@import_command(click.option("--dry-run", is_flag=True, help="only show the plan"))
def deployments_import(ctx, file: Path, dry_run: bool, output: str) -> None:
    """Recreate a deployment from its document: shows the plan, then carries it out."""
    result = ctx.api.request("POST", "/deployments/import", params={"dry_run": str(dry_run).lower()},
                             json=_read(file)).json()
    if output == "json":
        emit_object(result, output)
        return
    console.print(plain(f"deployment {result['deployment']}: " + ("plan (dry run, nothing written)" if dry_run
                                                                 else "imported")))
    for step in result["plan"]:
        console.print(plain(f"  - {step}"))


@click.command("export")
@export_options
@click.pass_obj
def server_export(ctx, output: str, target: Path | None) -> None:
    """The whole server's state: barclamps, networks and allocations, nodes, deployments, OS rules.
    It holds the nodes' power settings (BMC passwords among them): keep it like a backup."""
    _write(ctx.api.get("/export"), output, target)


@import_command(click.option("--merge", is_flag=True, help="into a non-empty server: add only what is missing "
                                                        "(by name)"))
def server_import(ctx, file: Path, merge: bool, output: str) -> None:
    """Recreate an exported state (into an empty server, unless --merge)."""
    result = ctx.api.request("POST", "/import", params={"merge": str(merge).lower()}, json=_read(file)).json()
    emit_object(result, output)


@click.group("inventory")
def inventory() -> None:
    """What Crowbar knows, for other tools."""


@inventory.command("ansible")
@click.option("--deployment", help="only the nodes and roles of this deployment")
@click.option("--list", "as_list", is_flag=True, help="accepted for Ansible's dynamic-inventory protocol")
@click.option("--host", help="Ansible's per-host call: answers {} (hostvars are in _meta)")
@click.pass_obj
def inventory_ansible(ctx, deployment: str | None, as_list: bool, host: str | None) -> None:
    """An Ansible dynamic inventory (JSON): nodes, groups by role and deployment, attributes.
    `ansible-playbook -i <(crowbar inventory ansible) site.yml`, or wrap it in a script."""
    if host is not None:
        click.echo("{}")
        return
    click.echo(json.dumps(ctx.api.get("/inventory/ansible", deployment=deployment), indent=2, sort_keys=True))


COMMANDS = {"deployments": [deployments_export, deployments_import], "cli": [server_export, server_import, inventory]}
