"""`crowbar proxy status | stage | offline`: online mode's caching proxies (docs/online-mode.md).

`status` lists the proxies (apt, pypi, git) with hits, misses, bytes and cache size; `stage`
pre-fetches Debian packages of an OS, pip requirements and git repositories into them; `offline
on|off` makes them serve only what is staged. The commands get the shared Context through
click's `pass_obj` (like crowbar.cli.power).
"""

from __future__ import annotations

import click

from crowbar.cli.client import CliError
from crowbar.cli.output import emit_list, emit_object, output_option, table_options

COLUMNS = ["kind", "running", "url", "hits", "misses", "bytes_served", "bytes_upstream", "cache_bytes", "staged"]
STAGE_TIMEOUT = 3600.0   # seconds: staging downloads
RESTART_TIMEOUT = 300.0  # seconds: offline on|off restarts the proxies


@click.group()
def proxy() -> None:
    """The caching proxies nodes fetch through: status, staging, offline mode."""


def _status(ctx, output: str) -> None:
    answer = ctx.api.get("/proxy")
    title = "proxies: OFFLINE (staged content only)" if answer["offline"] else "proxies: online"
    emit_list(answer["items"], COLUMNS, output, title=title)


@proxy.command("status")
@table_options
@output_option
@click.pass_obj
def proxy_status(ctx, output: str) -> None:
    """Per proxy: running, the URL nodes use, hits, misses, bytes served and fetched upstream,
    cache size, items staged (bytes_served: apt only; devpi and git daemon do not log it)."""
    _status(ctx, output)


@proxy.command("stage")
@click.option("--os", "os_name", metavar="OS", help="the OS the Debian packages are for (e.g. debian-12)")
@click.option("--pip", "pip", multiple=True, metavar="REQ", help="a pip requirement (repeatable)")
@click.option("--git", "git", multiple=True, metavar="URL[@REF]", help="a git repository at a ref (repeatable)")
@click.argument("packages", nargs=-1)
@output_option
@click.pass_obj
def proxy_stage(ctx, os_name: str | None, pip: tuple[str, ...], git: tuple[str, ...], packages: tuple[str, ...],
                output: str) -> None:
    """Fetch PACKAGES (Debian packages of --os, with their dependencies), --pip requirements and
    --git repositories into the caches, so that offline mode serves them."""
    if packages and not os_name:
        raise CliError("Debian packages need --os (the OS they are for, e.g. debian-12)")
    if not (packages or pip or git):
        raise CliError("nothing to stage: name packages (with --os), --pip REQ or --git URL[@REF]")
    what = [*packages, *pip, *git]
    click.echo(f"staging {len(what)} item(s) through the proxies: {', '.join(what)} (downloads; "
               "this can take minutes)...", err=True)
    answer = ctx.api.request("POST", "/proxy/stage", timeout=STAGE_TIMEOUT, json={
        "os": os_name, "packages": list(packages), "pip": list(pip), "git": list(git)}).json()
    if output == "json":
        emit_object(answer, output)
        return
    repos = ", ".join(f"{g['repo']}@{g['ref']} = {g['sha'][:12]}" for g in answer["git"]) or "none"
    click.echo(f"apt: {len(answer['apt'])} .deb file(s); pip: {len(answer['pypi'])} file(s); git: {repos}")


@proxy.command("offline")
@click.argument("state", type=click.Choice(["on", "off"]))
@output_option
@click.pass_obj
def proxy_offline(ctx, state: str, output: str) -> None:
    """on: the proxies serve only staged content (a node asking for anything else gets an error
    naming it); off: they fetch from their upstreams again."""
    answer = ctx.api.request("PUT", "/proxy/offline", timeout=RESTART_TIMEOUT, json={"offline": state == "on"}).json()
    if output == "json":
        emit_object(answer, output)
        return
    click.echo("proxies offline: only staged content is served" if answer["offline"] else
               "proxies online: fetching from their upstreams")
