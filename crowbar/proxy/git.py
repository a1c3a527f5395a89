"""The git mirror: bare mirrors of upstream repositories served read-only by `git daemon`.

A repository `https://host[:port]/path/name(.git)` is mirrored at `<state>/git/<host>[_port]/path/
name.git` and nodes clone `git://<admin>:9418/<host>[_port]/path/name.git`. The server fetches
(crowbar.services.proxy.mirror_git); git daemon only serves what is there, and answers a clone of
anything else with "no such repository" (`--informative-errors`).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from crowbar.errors import InvalidInput
from crowbar.proxy import ProxyConfig
from crowbar.proxy.apt import Counts

SCHEMES = ("https", "http", "git")
LOG = "git-daemon.log"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~+-]{0,99}$")
_REF = re.compile(r"^[A-Za-z0-9._/+-]{1,200}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def repo_path(url: str) -> str:
    """Where `url` is mirrored, relative to the mirror root ("host/path/name.git").
    InvalidInput for what is not an http(s) or git URL of a repository with a plain path."""
    if not isinstance(url, str) or len(url) > 500 or any(ord(c) < 33 for c in url):
        raise InvalidInput("a git URL is at most 500 printable characters without spaces", field="git")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise InvalidInput(f"{url!r} is not a git URL ({', '.join(s + '://' for s in SCHEMES)} HOST/PATH)",
                           field="git")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(f"{url!r}: no credentials, query or fragment in a git URL", field="git")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"{url!r}: bad port", field="git") from None
    segments = [s for s in parts.path.split("/") if s]
    if not segments or not all(_SEGMENT.match(s) for s in [parts.hostname, *segments]):
        raise InvalidInput(f"{url!r}: the host and every path segment must be plain names "
                           "(letters, digits, . _ ~ + -, not starting with a dot)", field="git")
    name = segments[-1].removesuffix(".git") + ".git"
    host = parts.hostname + (f"_{port}" if port else "")
    return "/".join([host, *segments[:-1], name])


def check_ref(ref: str) -> str:
    """A branch, tag or commit name as git accepts it; never an option or a range."""
    if (not isinstance(ref, str) or not _REF.match(ref) or ref.startswith(("-", "/", "."))
            or ref.endswith(("/", ".", ".lock")) or ".." in ref or "//" in ref or "@{" in ref):
        raise InvalidInput(f"{ref!r} is not a git branch, tag or commit", field="ref")
    return ref


def split_spec(spec: str) -> tuple[str, str]:
    """`URL[@REF]` (the CLI's form) -> (url, ref); the ref defaults to HEAD. (A git URL here has
    no user part, so an `@` always starts the ref.)"""
    url, at, ref = spec.rpartition("@")
    return (url, check_ref(ref)) if at else (spec, "HEAD")


def mirror_root(config: ProxyConfig) -> Path:
    return config.dir("git") / "mirrors"


def command(config: ProxyConfig) -> list[str]:
    return ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors", "--verbose",
            f"--base-path={mirror_root(config)}", f"--port={config.git_port}",
            *(f"--listen={a}" for a in config.listen), "--disable=receive-pack", str(mirror_root(config))]


def clone_url(config: ProxyConfig, rel: str, address: str | None = None) -> str:
    return f"{config.url('git', address)}/{rel}"


_HIT = re.compile(r"Request upload-pack for ")
_MISS = re.compile(r"does not appear to be a git repository|not exported|not in whitelist")


def stats(config: ProxyConfig) -> Counts:
    """From git daemon's log (--verbose): a served clone or fetch is a hit, a refused path a miss.
    git daemon does not log bytes; the service adds the bytes it fetched from upstreams."""
    try:
        text = (config.dir("git") / LOG).read_text(errors="replace")
    except OSError:
        return Counts()
    lines = text.splitlines()
    return Counts(hits=sum(bool(_HIT.search(x)) for x in lines), misses=sum(bool(_MISS.search(x)) for x in lines))
