"""Install from source: a role's `source` resolved to an exact commit before its run.

A role names what it installs from source with an attrib mapped at `source` (docs/install-from-source.md):

    source: {repo: https://git.example.com/app.git, ref: v1.2}   # ref: a branch, a tag or a sha

Like any attrib it has a default in barclamp.yml and is overridden per deployment (the role's data),
per noderole, or per node (`crowbar attribs set NAME VALUE --node N`). Before the run, in the
annealer's worker thread (`Annealer(prepare=...)`, outside any transaction), `prepare` asks the
admin server's git mirror for the repository and ref (`mirror_git(url, ref) -> {"url", "sha"}`,
services/proxy.py), and the run's document gets the resolved source:

    source: {repo, ref, sha: <40 hex>, url: <the mirror's clone URL, as nodes see it>,
             index_url: <the PyPI cache's simple index>}

so the node clones from the admin server at exactly that commit and installs its Python
dependencies from the admin's cache. On success the noderole's wall records
`source: {repo, ref, sha, previous_sha}` (previous_sha: the last different commit this noderole ran,
so a changed ref shows the old and the new one). Changing the ref is a change of role data or of a
node attrib, which re-queues the noderole (docs/attributes.md, "When values change").
"""

from __future__ import annotations

import re
from collections.abc import Callable

from crowbar.errors import CrowbarError
from crowbar.jigs.base import RunContext

SOURCE = "source"          # the top-level key of the run's document that names a source
DEFAULT_REF = "HEAD"       # a source without a ref: the repository's default branch
_SHA = re.compile(r"^[0-9a-f]{40}$")
# A ref as git allows it in a command line we pass on: no leading '-', no whitespace or control characters.
_REF = re.compile(r"^(?!-)[\x21-\x7e]{1,255}$")
_REPO = re.compile(r"^(?!-)[\x21-\x7e]{1,2048}$")

MirrorGit = Callable[[str, str], dict]   # (repo, ref) -> {"url": clone URL for nodes, "sha": 40 hex}
IndexUrl = Callable[[], str]             # the simple index URL nodes use


class SourceError(CrowbarError):
    """A role's source that cannot be resolved: its message names the repository and ref."""


def requested(attrs: dict) -> dict | None:
    """The {repo, ref} a run's document asks for, or None when it names no source; raises
    SourceError on a malformed one."""
    src = attrs.get(SOURCE)
    if src is None:
        return None
    if not isinstance(src, dict) or not isinstance(src.get("repo"), str):
        raise SourceError(f"source must be an object with a repo (and a ref), got {_show(src)}")
    repo, ref = src["repo"], src.get("ref") or DEFAULT_REF
    if not _REPO.match(repo):
        raise SourceError(f"source repo {_show(repo)} is not a URL git can take")
    if not isinstance(ref, str) or not _REF.match(ref):
        raise SourceError(f"source ref {_show(ref)} must be a branch, tag or commit name")
    return {"repo": repo, "ref": ref}


def resolve(attrs: dict, wall_before: dict | None, mirror_git: MirrorGit,
            index_url: IndexUrl) -> tuple[dict, str] | None:
    """Resolve the source `attrs` names (in place: attrs["source"] becomes the resolved one).
    Returns (the wall's part, a log line), or None when the run names no source."""
    src = requested(attrs)
    if src is None:
        return None
    try:
        got = mirror_git(src["repo"], src["ref"])
    except CrowbarError as exc:
        raise SourceError(f"source {src['repo']} at {src['ref']}: {exc}") from None
    sha = str((got or {}).get("sha", "")).lower()
    url = (got or {}).get("url")
    if not _SHA.match(sha) or not isinstance(url, str) or not url:
        raise SourceError(f"source {src['repo']} at {src['ref']}: the git mirror gave no commit ({_show(got)})")
    attrs[SOURCE] = {**src, "sha": sha, "url": url, "index_url": index_url()}
    wall = {**src, "sha": sha}
    before = (wall_before or {}).get(SOURCE) or {}
    if isinstance(before, dict) and before.get("sha"):
        previous = before["sha"] if before["sha"] != sha else before.get("previous_sha")
        if previous:
            wall["previous_sha"] = previous
    note = f"source {src['repo']} at {src['ref']}: commit {sha} (cloned from {url})\n"
    return {SOURCE: wall}, note


def preparer(mirror_git: MirrorGit, index_url: IndexUrl) -> Callable[[RunContext], tuple[dict, str] | None]:
    """The annealer's `prepare` hook: resolves each run's source through the given mirror."""
    def prepare(ctx: RunContext) -> tuple[dict, str] | None:
        return resolve(ctx.attrs, ctx.wall, mirror_git, index_url)

    return prepare


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
