"""The puppet jig for real: `puppet apply` (Debian's puppet package) here for the admin node and
over SSH to a real sshd on loopback; attributes in through Hiera, walls out, failures named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crowbar.jigs.base import NodeInfo, RunContext
from crowbar.jigs import puppet
from crowbar.jigs.puppet import PuppetJig

pytestmark = pytest.mark.skipif(shutil.which("puppet") is None, reason="puppet missing (apt-get install puppet)")

MODULE = """\
class greeter(String $message, String $dir, Integer $count = 1) {
  file { "${dir}/greeting.txt":
    content => "${message} x${count} on ${facts['crowbar_node']} for ${facts['crowbar_role']}\\n",
  }
  crowbar::wall { 'greeter':
    data => {'greeter' => {'file' => "${dir}/greeting.txt", 'count' => $count}},
  }
  crowbar::wall { 'zz-more':
    data => {'greeter' => {'more' => true}},
  }
}
"""


def _ctx(tmp_path, node: NodeInfo, manifest: str, attrs: dict, role: str = "greeter", output=None) -> RunContext:
    workdir = tmp_path / "work"
    workdir.mkdir()
    files = [{"name": f"manifests/{role}.pp", "content": manifest},
             {"name": "modules/greeter/manifests/init.pp", "content": MODULE}]
    return RunContext(run_id=3, noderole_id=30, node=node, role=role, jig="puppet", attrs=attrs, scripts=files,
                      workdir=workdir, output=output or (lambda _t: None))


def test_hiera_in_wall_out_on_the_admin_node(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    streamed = []
    ctx = _ctx(tmp_path, NodeInfo(id=1, name="admin.example.com", admin=True), "include greeter\n",
               {"greeter::message": "hello", "greeter::dir": str(out), "greeter::count": 2},
               output=streamed.append)
    result = PuppetJig().run(ctx)
    assert result.ok, result.log
    assert (out / "greeting.txt").read_text() == "hello x2 on admin.example.com for greeter\n"
    assert result.wall == {"greeter": {"file": str(out / "greeting.txt"), "count": 2, "more": True}}
    assert "<== puppet apply exited with 2 (changes applied)" in result.log
    assert "@@" not in result.log and "@@" not in "".join(streamed)
    assert "Applied catalog" in "".join(streamed)   # the console output came while it ran


def test_a_failed_resource_is_named_over_ssh(tmp_path, sshd):
    manifest = ('include greeter\n'
                'exec { "migrate": command => "/bin/sh -c \'echo no database >&2; exit 3\'", logoutput => true }\n')
    out = tmp_path / "out"
    out.mkdir()
    ctx = _ctx(tmp_path, NodeInfo(id=2, name="n2.example.com", admin=False, attrs=sshd), manifest,
               {"greeter::message": "hi", "greeter::dir": str(out)})
    result = PuppetJig().run(ctx)
    assert not result.ok and result.wall == {}
    last = result.log.strip().splitlines()[-1]
    assert last.startswith("!! resource Exec[migrate]: ") and "returned 3" in last, result.log
    assert (out / "greeting.txt").read_text() == "hi x1 on n2.example.com for greeter\n"  # the rest applied


def test_a_manifest_error_names_file_and_line(tmp_path):
    ctx = _ctx(tmp_path, NodeInfo(id=1, name="admin.example.com", admin=True), "\nnotify { 'x': messagee => 1 }\n", {})
    result = PuppetJig().run(ctx)
    assert not result.ok
    last = result.log.strip().splitlines()[-1]
    assert last.startswith("!! manifest manifests/greeter.pp:2: "), result.log
    assert "messagee" in last


def test_a_role_without_its_manifest_fails_before_running(tmp_path):
    ctx = _ctx(tmp_path, NodeInfo(id=1, name="admin.example.com", admin=True), "", {}, role="other")
    ctx.scripts = [f for f in ctx.scripts if f["name"].startswith("modules/")]
    result = PuppetJig().run(ctx)
    assert not result.ok and "the barclamp has no puppet/manifests/other.pp" in result.log


def _without_puppet(tmp_path, monkeypatch, apt_get: str) -> Path:
    """PATH as this machine's, less `puppet`, with a fake apt-get first (it logs its arguments)."""
    shadow, fake = tmp_path / "shadow", tmp_path / "fakebin"
    shadow.mkdir()
    fake.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "puppet":
            (shadow / tool.name).symlink_to(tool)
    (fake / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {tmp_path}/apt.log\n{apt_get}\n')
    (fake / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/sbin:{shadow}")
    return fake


def _installs_puppet(tmp_path) -> str:
    """What the fake `apt-get install` runs to "install" puppet: a wrapper around this machine's."""
    wrapper = f"{tmp_path}/fakebin/puppet"
    return f'printf "#!/bin/sh\\nexec /usr/bin/puppet \\"\\$@\\"\\n" > {wrapper}; chmod 755 {wrapper}'


def _greet(tmp_path, message: str):
    """Run the greeter manifest on this machine through the jig; (result, its output dir)."""
    out = tmp_path / "out"
    out.mkdir()
    ctx = _ctx(tmp_path, NodeInfo(id=1, name="admin.example.com", admin=True), "include greeter\n",
               {"greeter::message": message, "greeter::dir": str(out)})
    return PuppetJig().run(ctx), out


def test_a_node_without_puppet_gets_puppet_agent_from_apt_first(tmp_path, monkeypatch):
    fake = _without_puppet(tmp_path, monkeypatch, f'case "$1" in install) {_installs_puppet(tmp_path)};; esac')
    result, out = _greet(tmp_path, "installed")
    assert result.ok, result.log
    apt = (tmp_path / "apt.log").read_text().splitlines()
    assert apt == ["apt-get update -q", "apt-get install -y -q -o Acquire::Retries=3 puppet-agent"]
    assert "puppet is missing: installing puppet-agent" in result.log
    assert (out / "greeting.txt").read_text() == "installed x1 on admin.example.com for greeter\n"
    assert (fake / "puppet").exists()


def test_a_failed_puppet_install_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(puppet, "INSTALL_PAUSE", 0)
    _without_puppet(tmp_path, monkeypatch, 'case "$1" in install) echo "E: Unable to locate package puppet-agent"; '
                                           'exit 100;; esac')
    ctx = _ctx(tmp_path, NodeInfo(id=1, name="admin.example.com", admin=True), "include greeter\n", {})
    result = PuppetJig().run(ctx)
    assert not result.ok and result.wall == {}
    assert "E: Unable to locate package puppet-agent" in result.log
    last = result.log.strip().splitlines()[-1]
    assert last.startswith("!! installing puppet-agent on this machine failed (apt-get exit 100"), result.log
    # tried INSTALL_TRIES times, each after a fresh `apt-get update`
    assert (tmp_path / "apt.log").read_text().splitlines() == \
        ["apt-get update -q", "apt-get install -y -q -o Acquire::Retries=3 puppet-agent"] * puppet.INSTALL_TRIES
    assert f"apt-get exited with 100 (try 2 of {puppet.INSTALL_TRIES}): trying again in 0 s" in result.log


def test_a_puppet_install_that_fails_once_is_tried_again(tmp_path, monkeypatch):
    # as when the mirror drops a download half-way: the second try installs puppet
    monkeypatch.setattr(puppet, "INSTALL_PAUSE", 0)
    install = (f'if [ -e {tmp_path}/failed ]; then {_installs_puppet(tmp_path)}; '
               f'else touch {tmp_path}/failed; echo "E: Failed to fetch ruby3.1"; exit 100; fi')
    _without_puppet(tmp_path, monkeypatch, f'case "$1" in install) {install};; esac')
    result, out = _greet(tmp_path, "again")
    assert result.ok, result.log
    assert f"apt-get exited with 100 (try 1 of {puppet.INSTALL_TRIES}): trying again in 0 s" in result.log
    assert len((tmp_path / "apt.log").read_text().splitlines()) == 4
    assert (out / "greeting.txt").read_text() == "again x1 on admin.example.com for greeter\n"


def test_the_sample_pphello_barclamp_applies_here(tmp_path):
    """samples/barclamps/pphello (the lab's online test runs it on an installed VM, through the package
    proxy, with its service): here its module writes the page, service off, and the wall comes out."""
    from crowbar.barclamps import loader

    bc = loader.read(Path(__file__).resolve().parents[2] / "samples" / "barclamps" / "pphello")
    role = next(r for r in bc.roles if r.name == "pphello")
    attrs = {a.map: a.default for a in role.attribs if a.default is not None}
    attrs.update({"pphello::message": "Hello from Hiera", "pphello::dir": str(tmp_path / "www"),
                  "pphello::service": False})
    workdir = tmp_path / "work"
    workdir.mkdir()
    ctx = RunContext(run_id=4, noderole_id=40, node=NodeInfo(id=1, name="admin.example.com", admin=True),
                     role="pphello", jig="puppet", attrs=attrs, scripts=role.scripts, workdir=workdir,
                     output=lambda _t: None)
    result = PuppetJig().run(ctx)
    assert result.ok, result.log
    assert (tmp_path / "www" / "index.html").read_text().startswith("<h1>Hello from Hiera</h1>\n")
    assert set(result.wall) == {"pphello_url", "pphello_puppet"}, result.wall
    assert result.wall["pphello_url"].startswith("http://") and result.wall["pphello_url"].endswith(":8091/")
    assert result.wall["pphello_puppet"].split(".")[0] in ("7", "8")
