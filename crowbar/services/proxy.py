"""Online mode (docs/online-mode.md): the caching proxies' status, staging, offline mode, and the
git mirror and PyPI index that install-from-source uses.

`ctx` is the server's running proxies (crowbar.server.proxies.Proxies): anything with `config`
(a crowbar.proxy.ProxyConfig), `running()` (kind -> PID or None) and `set_offline(bool)`
(restarts the daemons in the new mode). No database: the proxies' state is their caches and
<state dir>/staged.json, the record of what was staged.

The interface for install from source:
    mirror_git(ctx, url, ref) -> {"url": clone URL as nodes see it, "sha": 40-hex commit}
    pip_index_url(ctx) -> the simple index URL nodes give pip
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.proxy import KINDS, ProxyConfig, apt, git, pypi, tree_bytes
from crowbar.provisioner import osimage

log = logging.getLogger("crowbar.proxy")

GIT_TIMEOUT = 600
STAGE_TIMEOUT = 1800
# apt-cacher-ng gives each client connection a budget of upstream retries (DlMaxRetries); a new
# apt-get is a new connection, so a fetch the mirror kept dropping is tried again by a new run
STAGE_FETCH_TRIES = 3
MAX_STAGE_ITEMS = 200


class Proxies(Protocol):
    config: ProxyConfig

    def running(self) -> dict[str, int | None]: ...

    def set_offline(self, offline: bool) -> None: ...


def _need(ctx: Proxies | None) -> Proxies:
    if ctx is None:
        raise Conflict("this server runs no caching proxies (crowbar server --proxies)", field="proxy")
    return ctx


# --- the interface for install from source ---

def pip_index_url(ctx: Proxies) -> str:
    """The simple index URL nodes give pip (`pip install --index-url ...`)."""
    return pypi.index_url(_need(ctx).config)


def apt_proxy_url(ctx: Proxies) -> str:
    """The HTTP proxy installed nodes' apt uses."""
    return _need(ctx).config.url("apt")


def mirror_git(ctx: Proxies, url: str, ref: str) -> dict[str, str]:
    """Mirror `url` on the admin server (clone, or fetch what is new) and resolve `ref` (branch, tag
    or commit) to its commit; a full sha the mirror holds needs no fetch. Offline, nothing is
    fetched: `ref` resolves in the mirror as staged, else Conflict naming the repository and ref.
    Answers {"url", "sha"}: the clone URL nodes use and the 40-hex commit."""
    config = _need(ctx).config
    rel = git.repo_path(url)
    git.check_ref(ref)
    path = git.mirror_root(config) / rel
    with _locked(path.with_name(path.name + ".lock")):
        sha = _resolve(path, ref) if path.exists() else None
        if config.offline:  # what the mirror holds, as it was staged; nothing is fetched
            if sha is None:
                what = "is not staged" if not path.exists() else f"has no {ref!r} staged"
                raise Conflict(f"offline: git mirror of {url} {what}; stage it while online with "
                               f"`crowbar proxy stage --git {url}@{ref}`", field="ref")
        elif not (sha is not None and sha == ref):  # a branch or tag may have moved: fetch
            before = tree_bytes(path)
            _fetch(url, path, config.via)
            _count_upstream(config, "git", tree_bytes(path) - before)
            sha = _resolve(path, ref)
        if sha is None:
            raise NotFound(f"{url} has no branch, tag or commit {ref!r}", field="ref")
    return {"url": git.clone_url(config, rel), "sha": sha}


def _git(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", "credential.helper=", "-c", "protocol.file.allow=never", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _resolve(path: Path, ref: str) -> str | None:
    out = _git("-C", str(path), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and git.SHA_RE.match(sha) else None


def _fetch(url: str, path: Path, via: str | None = None) -> None:
    """Clone or fetch the mirror; with `via`, over HTTP(S) through that proxy (kept in the
    mirror's own config, so later fetches use it too)."""
    try:
        if path.exists():
            out = _git("-C", str(path), "fetch", "--prune", "--quiet", "origin", timeout=GIT_TIMEOUT)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            subprocess.run(["rm", "-rf", "--", str(tmp)], check=False)
            out = _git("clone", "--mirror", "--quiet", *(["-c", f"http.proxy={via}"] if via else []), "--", url,
                       str(tmp), timeout=GIT_TIMEOUT)
            if out.returncode == 0:
                tmp.rename(path)
    except subprocess.TimeoutExpired:
        raise Conflict(f"git: fetching {url} took over {GIT_TIMEOUT}s", field="git") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["failed"])[-1]
        raise Conflict(f"git: cannot fetch {url}: {last}", field="git")


@contextmanager
def _locked(lock: Path):
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- what was staged, and bytes fetched that the daemons' logs do not show ---

def _ledger_path(config: ProxyConfig) -> Path:
    return Path(config.state_dir) / "staged.json"


def _ledger(config: ProxyConfig) -> dict:
    try:
        data = json.loads(_ledger_path(config).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_ledger(config: ProxyConfig, change) -> None:
    path = _ledger_path(config)
    with _locked(path.with_suffix(".lock")):
        data = _ledger(config)
        change(data)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def _count_upstream(config: ProxyConfig, kind: str, nbytes: int) -> None:
    def change(data):
        upstream = data.setdefault("upstream_bytes", {})
        upstream[kind] = upstream.get(kind, 0) + max(nbytes, 0)
    _update_ledger(config, change)


# --- status, offline, staging ---

def status(ctx: Proxies) -> dict:
    """Per kind: whether it runs, its URL for nodes, hits, misses, bytes and cache size."""
    ctx = _need(ctx)
    config = ctx.config
    pids = ctx.running()
    ledger = _ledger(config)
    staged = {"apt": sum(len(v) for v in ledger.get("apt", {}).values()),
              "pypi": len(ledger.get("pypi", [])), "git": len(ledger.get("git", []))}
    items = []
    for kind in KINDS:
        counts = {"apt": apt.stats, "pypi": pypi.stats, "git": git.stats}[kind](config)
        cache = {"apt": config.dir("apt") / "cache", "pypi": pypi.server_dir(config),
                 "git": git.mirror_root(config)}[kind]
        upstream = counts.bytes_upstream + ledger.get("upstream_bytes", {}).get(kind, 0)
        items.append({
            "kind": kind, "running": pids.get(kind) is not None, "pid": pids.get(kind),
            "url": pypi.index_url(config) if kind == "pypi" else config.url(kind),
            "hits": counts.hits, "misses": counts.misses,
            "bytes_served": counts.bytes_served if kind == "apt" else None,
            "bytes_upstream": upstream, "cache_bytes": tree_bytes(cache), "staged": staged[kind]})
    return {"offline": config.offline, "items": items}


def set_offline(ctx: Proxies, offline: bool) -> dict:
    ctx = _need(ctx)
    if offline != ctx.config.offline:
        ctx.set_offline(offline)
        log.info("proxies %s", "offline: only staged content is served" if offline else "online")
    return status(ctx)


def stage(ctx: Proxies, os_name: str | None = None, packages: list[str] | None = None,
          pip: list[str] | None = None, git_specs: list[str] | None = None) -> dict:
    """Fetch into the caches through the proxies themselves, as a node would: Debian packages of
    `os_name` with their dependencies, Python requirements with theirs, git repositories at a ref.
    Online only (offline there is nowhere to fetch from). Answers what was staged."""
    ctx = _need(ctx)
    config = ctx.config
    packages, pip, git_specs = list(packages or []), list(pip or []), list(git_specs or [])
    if not (packages or pip or git_specs):
        raise InvalidInput("nothing to stage: name packages (with an OS), pip requirements or git URLs")
    if len(packages) + len(pip) + len(git_specs) > MAX_STAGE_ITEMS:
        raise InvalidInput(f"at most {MAX_STAGE_ITEMS} items per stage request")
    if config.offline:
        raise Conflict("the proxies are offline: staging fetches from the upstreams; "
                       "`crowbar proxy offline off` first", field="offline")
    for name in packages:
        _check_word(name, "packages", _DEB_NAME)
    for req in pip:
        _check_word(req, "pip", _PIP_REQ)
    specs = [git.split_spec(spec) for spec in git_specs]
    for url, _ref in specs:
        git.repo_path(url)
    out: dict = {"apt": [], "pypi": [], "git": []}
    if packages:
        if not os_name:
            raise InvalidInput("staging Debian packages needs the OS they are for (--os)", field="os")
        out["apt"] = _stage_apt(config, osimage.recipe(os_name), packages)
        _update_ledger(config, lambda d: d.setdefault("apt", {}).__setitem__(
            os_name, sorted(set(d["apt"].get(os_name, [])) | set(packages))))
    if pip:
        out["pypi"] = _stage_pip(config, pip)
        _update_ledger(config, lambda d: d.__setitem__("pypi", sorted(set(d.get("pypi", [])) | set(pip))))
    for url, ref in specs:
        mirrored = mirror_git(ctx, url, ref)
        out["git"].append({"repo": url, "ref": ref, **mirrored})
        entry = {"repo": url, "ref": ref}
        _update_ledger(config, lambda d: d.__setitem__("git", [x for x in d.get("git", []) if x != entry] + [entry]))
    return out


_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}(=[A-Za-z0-9.+~:-]{1,60})?$")
_PIP_REQ = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9,._-]{1,100}\])?"
                      r"((==|>=|<=|~=|!=|>|<)[A-Za-z0-9.*+!-]{1,60}(,(==|>=|<=|~=|!=|>|<)[A-Za-z0-9.*+!-]{1,60}){0,4})?$")


def _check_word(value, field: str, pattern) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidInput(f"{value!r} is not a valid {'Debian package' if field == 'packages' else 'pip requirement'}",
                           field=field)


def _run(argv: list[str], what: str, tries: int = 1, again: str = "") -> str:
    """Run a staging command; fail with its last error lines. With `tries`, a failure whose output
    holds `again` (a transient one) runs the command again, up to `tries` runs in all."""
    for run in range(1, tries + 1):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=STAGE_TIMEOUT,
                                 env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PIP_CONFIG_FILE": os.devnull})
        except subprocess.TimeoutExpired:
            raise Conflict(f"{what}: took over {STAGE_TIMEOUT}s") from None
        if out.returncode == 0 or run == tries or again not in (out.stderr or out.stdout):
            break
        log.warning("%s: run %d of %d failed (%s), running it again", what, run, tries, again)
    if out.returncode != 0:
        errors = [x for x in (out.stderr or out.stdout).splitlines() if x.startswith(("E:", "ERROR"))]
        raise Conflict(f"{what}: {'; '.join(errors[-3:]) or (out.stderr.strip().splitlines() or ['failed'])[-1]}")
    return out.stdout


def _stage_apt(config: ProxyConfig, recipe: osimage.Recipe, packages: list[str]) -> list[str]:
    """apt-get update and a download-only install, into a throwaway apt root, through the proxy:
    the index files and every .deb of the packages and their dependencies land in its cache."""
    started = time.monotonic()
    mirror = osimage.mirror_url(recipe)
    proxy = f"http://{config.local_address}:{config.apt_port}"
    with tempfile.TemporaryDirectory(prefix="crowbar-stage-apt-") as tmp:
        root = Path(tmp)
        apt.make_apt_root(root, mirror, recipe.suite, recipe.components)
        options = apt.apt_options(root, proxy)
        _run(["apt-get", *options, "update"], f"apt-get update for {recipe.name} through the proxy")
        _run(["apt-get", *options, "install", "--download-only", "-y", *packages],
             f"staging {', '.join(packages)} for {recipe.name}", tries=STAGE_FETCH_TRIES, again="E: Failed to fetch")
        debs = sorted(p.name for p in (root / "var/cache/apt/archives").glob("*.deb"))
    log.info("staged %d .deb files for %s in %.1fs", len(debs), recipe.name, time.monotonic() - started)
    return debs


def _stage_pip(config: ProxyConfig, requirements: list[str]) -> list[str]:
    """pip download (with dependencies) through the PyPI cache: the project pages and files land in it."""
    with tempfile.TemporaryDirectory(prefix="crowbar-stage-pip-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir", "--disable-pip-version-check",
              "--progress-bar", "off", "-d", tmp, "--index-url", pypi.index_url(config, config.local_address),
              *requirements], f"staging {', '.join(requirements)} through the PyPI cache")
        return sorted(p.name for p in Path(tmp).iterdir())
