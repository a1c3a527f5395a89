"""Install from source, server side (services/sources.py): a role's `source` resolved to an exact
commit through the admin server's git mirror (services.proxy.mirror_git: real git, the upstream a
`git daemon` on loopback) before its run, overridable per deployment and node; the wall
records the commit, and the previous one when the ref changes; a bad source fails the run with a
message naming it. The jig is `noop`: what reaches a node is tests/lab/test_lab_online.py's."""

from __future__ import annotations

import pytest
from gitkit import GitDaemon, commit, git, make_repo, proxies
from sqlalchemy import select

from crowbar.db.models import NodeRole, Run
from crowbar.engine.annealer import Annealer
from crowbar.server.annealer import source_preparer
from crowbar.services import attribs, catalog, deployments, noderoles, nodes, proxy, sources
from crowbar.services.sources import SourceError

INDEX = "http://admin.example.com:3141/root/pypi/+simple/"   # pip_index_url of the proxies below
NODE = "n1.example.com"
BARCLAMP = """\
barclamp: {name: fromsrc, version: "1"}
roles:
  - name: app
    jig: noop
    attribs:
      - name: app-source
        map: source
        default: {repo: REPO, ref: main}
        schema: {type: object, properties: {repo: {type: string}, ref: {type: string}}}
"""


@pytest.fixture
def upstream(tmp_path):
    """A repository with tag v1 and a later commit on main, served by git daemon on loopback."""
    repo = make_repo(tmp_path / "upstream" / "app")
    first = git("rev-parse", "HEAD", cwd=repo)
    git("tag", "v1", cwd=repo)
    second = commit(repo, "second")
    daemon = GitDaemon(tmp_path / "upstream")
    yield {"repo": f"{daemon.url}/app", "v1": first, "main": second, "path": repo}
    daemon.stop()


@pytest.fixture
def ctx(tmp_path):
    """The admin server's proxies, as nodes see them at admin.example.com."""
    return proxies(tmp_path / "proxy", "admin.example.com")


@pytest.fixture
def mirror(ctx):
    calls = []

    def mirror_git(url, ref):
        calls.append(ref)
        return proxy.mirror_git(ctx, url, ref)

    mirror_git.calls = calls
    return mirror_git


def test_requested_refuses_malformed_sources():
    assert sources.requested({}) is None
    assert sources.requested({"source": {"repo": "https://h/r.git"}}) == {"repo": "https://h/r.git", "ref": "HEAD"}
    for bad in ("https://h/r.git", {"ref": "main"}, {"repo": "-uupload-pack=touch /tmp/x"},
                {"repo": "https://h/r.git", "ref": "--upload-pack=x"}, {"repo": "https://h/r .git"},
                {"repo": "https://h/r.git", "ref": 7}):
        with pytest.raises(SourceError):
            sources.requested({"source": bad})


def test_resolve_gives_the_run_the_mirror_url_the_commit_and_the_index(upstream, mirror):
    attrs = {"source": {"repo": upstream["repo"], "ref": "v1"}, "other": 1}
    wall, note = sources.resolve(attrs, {}, mirror, lambda: INDEX)
    port = upstream["repo"].split(":")[-1].split("/")[0]
    assert attrs["source"] == {"repo": upstream["repo"], "ref": "v1", "sha": upstream["v1"],
                               "url": f"git://admin.example.com:9418/127.0.0.1_{port}/app.git", "index_url": INDEX}
    assert wall == {"source": {"repo": upstream["repo"], "ref": "v1", "sha": upstream["v1"]}}
    assert upstream["v1"] in note
    # a sha is a ref too; the previous different commit is kept
    attrs = {"source": {"repo": upstream["repo"], "ref": upstream["main"]}}
    wall2, _ = sources.resolve(attrs, wall, mirror, lambda: INDEX)
    assert wall2["source"]["sha"] == upstream["main"] and wall2["source"]["previous_sha"] == upstream["v1"]
    # a re-run at the same commit keeps the one before it
    wall3, _ = sources.resolve(attrs, wall2, mirror, lambda: INDEX)
    assert wall3["source"]["previous_sha"] == upstream["v1"]


def test_resolve_names_what_is_missing(upstream, mirror):
    with pytest.raises(SourceError, match=r"at nope: .* has no branch, tag or commit 'nope'"):
        sources.resolve({"source": {"repo": upstream["repo"], "ref": "nope"}}, {}, mirror,
                        lambda: INDEX)
    with pytest.raises(SourceError, match="gave no commit"):  # a mirror that answers nonsense
        sources.resolve({"source": {"repo": "https://h/r.git"}}, {}, lambda u, r: {"url": "x", "sha": "HEAD"},
                        lambda: INDEX)


def _wall_and_log(db, role="app"):
    with db.session() as s:
        nr = s.scalars(select(NodeRole).order_by(NodeRole.id.desc())).first()
        run = s.scalars(select(Run).where(Run.node_role_id == nr.id).order_by(Run.id.desc())).first()
        return nr.state, nr.wall, run.log, run.attrs


def test_the_annealer_resolves_before_the_run_and_a_changed_ref_reruns(db, tmp_path, upstream, ctx):
    bc = tmp_path / "bc"
    bc.mkdir()
    (bc / "barclamp.yml").write_text(BARCLAMP.replace("REPO", upstream["repo"]))
    with db.session() as s:
        catalog.import_barclamp(s, bc)
        nodes.create_node(s, NODE)
        deployments.create_deployment(s, "d")
        deployments.bind(s, "d", "app", NODE)
        deployments.commit(s, "d")
    annealer = Annealer(db, workers=1, prepare=source_preparer(ctx))   # what `crowbar server` gives it
    try:
        annealer.run_until_idle(timeout=60)
        state, wall, log, run_attrs = _wall_and_log(db)
        assert state == "active", log
        assert wall == {"source": {"repo": upstream["repo"], "ref": "main", "sha": upstream["main"]}}
        assert f"commit {upstream['main']}" in log.splitlines()[0]
        assert run_attrs["source"] == {"repo": upstream["repo"], "ref": "main"}  # what was asked

        # per deployment: only the ref, deep-merged over the default; committing re-queues the noderole
        with db.session() as s:
            deployments.set_role_data(s, "d", "app", {"source": {"ref": "v1"}})
            deployments.commit(s, "d")
        annealer.run_until_idle(timeout=60)
        state, wall, log, _ = _wall_and_log(db)
        assert state == "active", log
        assert wall["source"] == {"repo": upstream["repo"], "ref": "v1", "sha": upstream["v1"],
                                  "previous_sha": upstream["main"]}

        # per node: a node attrib (hint) wins over the deployment and re-queues the noderole
        with db.session() as s:
            attribs.set_on_node(s, "app-source", {"repo": upstream["repo"], "ref": upstream["main"]}, NODE)
        annealer.run_until_idle(timeout=60)
        state, wall, log, _ = _wall_and_log(db)
        assert state == "active", log
        assert wall["source"]["sha"] == upstream["main"] and wall["source"]["previous_sha"] == upstream["v1"]

        # a ref the repository does not have: the run fails naming it; the wall keeps the last good one
        with db.session() as s:
            attribs.set_on_node(s, "app-source", {"repo": upstream["repo"], "ref": "v9"}, NODE)
        annealer.run_until_idle(timeout=60)
        state, wall2, log, _ = _wall_and_log(db)
        assert state == "error"
        assert log == f"!! source {upstream['repo']} at v9: {upstream['repo']} has no branch, tag or commit 'v9'\n"
        assert wall2 == wall
        assert run_attrs["source"]["ref"] == "main"

        # a server without proxies says so
        annealer.prepare = source_preparer(None)
        with db.session() as s:
            attribs.set_on_node(s, "app-source", {"repo": upstream["repo"], "ref": "main"}, NODE)
            noderoles.retry(s, s.scalars(select(NodeRole.id).order_by(NodeRole.id.desc())).first())
        annealer.run_until_idle(timeout=60)
        state, _wall, log, _ = _wall_and_log(db)
        assert state == "error"
        assert "this server runs no caching proxies" in log
    finally:
        annealer._pool.shutdown(wait=True)
