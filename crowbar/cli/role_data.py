"""`crowbar deployments role-data get | set | edit`: a bound role's data in a deployment.

The data is a JSON object the deployment hands the role's noderoles on its next commit (proposed;
`committed` is what runs get now). `set --set PATH=VALUE` and `edit` read the data first and send
its ETag back as If-Match: when someone else changed it in between, the server refuses the write
(412) and the command says so, with nothing changed (`edit` keeps your version in a file).
Commands get the shared Context through click's `pass_obj` (like crowbar.cli.power).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from crowbar.cli.client import CliError, seg, shown
from crowbar.cli.output import console, emit_object, output_option, plain


@click.group("role-data")
def role_data() -> None:
    """A bound role's data in a deployment (get, set, edit); commit the deployment to run it."""


def _path(deployment: str, role: str) -> str:
    return f"/deployments/{seg(deployment)}/roles/{seg(role)}"


def _no_constant(word: str):
    raise ValueError(f"{word} is not a JSON number")


def _loads(text: str, where: str):
    """JSON as the server reads it (NaN and Infinity are not JSON; the server checks the rest)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise CliError(f"{where} is nested too deeply") from None
    except ValueError as exc:
        raise CliError(f"{where} is not JSON: {exc}") from None


def _put(doc: dict, path: str, value) -> None:
    """Place `value` at the slash path (making the objects on the way)."""
    parts = path.strip("/").split("/")
    for part in parts[:-1]:
        if not isinstance(doc.get(part), dict):
            doc[part] = {}
        doc = doc[part]
    doc[parts[-1]] = value


def _json_object(text: str, where: str) -> dict:
    value = _loads(text, where)
    if not isinstance(value, dict):
        raise CliError(f"{where} must be a JSON object, not {type(value).__name__}")
    return value


def _assignment(text: str) -> tuple[str, object]:
    """PATH=VALUE: VALUE is strict JSON when it parses as such, else a string."""
    path, sep, raw = text.partition("=")
    if not sep or not path.strip("/"):
        raise CliError(f"--set {shown(text)}: expected PATH=VALUE (PATH like web/port, VALUE JSON or a string)")
    try:
        return path, _loads(raw, "the value")
    except CliError:
        return path, raw


def _changed_meanwhile(exc: CliError, deployment: str, role: str, kept: Path | None = None) -> CliError:
    if "[HTTP 412]" not in str(exc):
        return exc
    where = f"; your version is in {kept}" if kept else ""
    return CliError(f"someone else changed the data of role {role!r} in deployment {deployment!r} after this "
                    f"command read it: nothing was written{where}. Run the command again to start from the "
                    "current data.")


def _show(answer: dict, etag: str | None, output: str) -> None:
    if output == "json":
        emit_object(answer, output)
        return
    emit_object({"deployment": answer["deployment"], "role": answer["role"], "proposed": answer["proposed"],
                 "committed": answer["committed"], "etag": etag}, output)
    if answer["proposed"] != answer["committed"]:
        console.print(plain(f"proposed differs from committed: `crowbar deployments commit {answer['deployment']}` "
                            "runs it"))


@role_data.command("get")
@click.argument("deployment")
@click.argument("role")
@output_option
@click.pass_obj
def role_data_get(ctx, deployment: str, role: str, output: str) -> None:
    """The proposed and committed data of ROLE in DEPLOYMENT, with its ETag."""
    answer, etag = ctx.api.read(_path(deployment, role))
    _show(answer, etag, output)


@role_data.command("set")
@click.argument("deployment")
@click.argument("role")
@click.argument("data", required=False)
@click.option("--file", "file", type=click.File("r", encoding="utf-8"), help="read the JSON object from this "
                                                                            "file (- for stdin)")
@click.option("--set", "assignments", multiple=True, metavar="PATH=VALUE",
              help="change one value in the current data (repeatable; VALUE is JSON, or else a string)")
@click.option("--if-match", help="replace the data only if its ETag is still this (from `role-data get`)")
@output_option
@click.pass_obj
def role_data_set(ctx, deployment: str, role: str, data: str | None, file, assignments: tuple[str, ...],
                  if_match: str | None, output: str) -> None:
    """Replace the proposed data with DATA (a JSON object) or --file, or change values in it with
    --set. The deployment is proposed again: commit it to run the new data."""
    given = [x for x in (data is not None, file is not None, bool(assignments)) if x]
    if len(given) != 1:
        raise CliError("give the data as one of: a JSON object argument, --file FILE, or --set PATH=VALUE...")
    path = _path(deployment, role)
    if assignments:
        current, etag = ctx.api.read(path)
        new = json.loads(json.dumps(current["proposed"]))
        for key, value in map(_assignment, assignments):
            _put(new, key, value)
        if_match = if_match or etag
    else:
        new = _json_object(file.read() if file is not None else data, "the role data")
    try:
        answer = ctx.api.put(path, {"data": new}, if_match=if_match)
    except CliError as exc:
        raise _changed_meanwhile(exc, deployment, role) from None
    _show(answer, None, output) if output == "json" else console.print(plain(
        f"role {role} in deployment {deployment}: data set; commit the deployment to run it"))


@role_data.command("edit")
@click.argument("deployment")
@click.argument("role")
@click.pass_obj
def role_data_edit(ctx, deployment: str, role: str) -> None:
    """Edit the proposed data in $VISUAL or $EDITOR, then save it unless someone else changed it
    meanwhile (your version is then kept in a file)."""
    path = _path(deployment, role)
    current, etag = ctx.api.read(path)
    before = json.dumps(current["proposed"], indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    edited = click.edit(before, extension=".json", require_save=True)
    if edited is None or edited.strip() == before.strip():
        console.print(plain("no change"))
        return
    try:
        new = _json_object(edited, "the edited data")
    except CliError as exc:
        raise CliError(f"{exc} (your version is in {_keep(edited)})") from None
    try:
        ctx.api.put(path, {"data": new}, if_match=etag)
    except CliError as exc:
        raise _changed_meanwhile(exc, deployment, role, _keep(edited)) from None
    console.print(plain(f"role {role} in deployment {deployment}: data saved; commit the deployment to run it"))


def _keep(text: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="crowbar-role-data-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(name)
