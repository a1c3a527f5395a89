"""The script jig on other nodes: scripts run over SSH, here against a real sshd on loopback."""

from __future__ import annotations

import os
import signal
import time

from crowbar.jigs.base import NodeInfo
from crowbar.jigs.script import ScriptJig

REPORT = """\
#!/bin/sh
set -e
touch step1
cat > "$CROWBAR_WALL" <<EOF
{"remote": {"host": "$(hostname)", "pwd": "$PWD", "node": "$CROWBAR_NODE", "role": "$CROWBAR_ROLE",
            "run": "$CROWBAR_RUN_ID", "attrs": $(cat "$CROWBAR_ATTRS")}}
EOF
echo out-line
echo err-line >&2
"""

SECOND = """\
set -e
test -f step1
echo '{"remote": {"second": true}}' > "$CROWBAR_WALL"
printf 'no newline at the end'
"""


def _node(attrs: dict) -> NodeInfo:
    return NodeInfo(id=7, name="d52-54-00-12-34-56.example.com", admin=False, attrs=attrs)


def test_scripts_run_remotely_and_the_wall_comes_back(make_ctx, sshd):
    attrs = {"ntp": {"servers": ["10.0.0.1"]}}
    ctx = make_ctx({"01-report.sh": REPORT, "02-second": SECOND}, node=_node(sshd), attrs=attrs,
                   role="ntp-client")
    result = ScriptJig().run(ctx)
    assert result.ok, result.log
    remote = result.wall["remote"]
    assert remote["second"] is True
    assert remote["host"] == os.uname().nodename
    assert remote["pwd"] != str(ctx.workdir) and remote["pwd"].startswith("/")
    assert not os.path.exists(remote["pwd"])  # the remote temp dir is gone
    assert (remote["node"], remote["role"], remote["run"]) == (
        "d52-54-00-12-34-56.example.com", "ntp-client", str(ctx.run_id))
    assert remote["attrs"] == attrs
    log = result.log
    assert log.index("==> 01-report.sh") < log.index("out-line") < log.index("err-line")
    assert log.index("err-line") < log.index("<== 01-report.sh exited with 0") < log.index("==> 02-second")
    assert "no newline at the end\n<== 02-second exited with 0" in log
    assert "@@" not in log


def test_failing_script_fails_the_run_with_its_log(make_ctx, sshd):
    ctx = make_ctx({"01-fail.sh": "echo about to fail\necho oops >&2\nexit 4\n",
                    "02-never.sh": "echo should not run\n"}, node=_node(sshd))
    result = ScriptJig().run(ctx)
    assert not result.ok
    assert result.wall == {}
    for line in ("==> 01-fail.sh", "about to fail", "oops", "<== 01-fail.sh exited with 4"):
        assert line in result.log
    assert "02-never" not in result.log


def test_invalid_wall_fails(make_ctx, sshd):
    result = ScriptJig().run(make_ctx({"01-bad.sh": "echo '{oops' > \"$CROWBAR_WALL\"\n"}, node=_node(sshd)))
    assert not result.ok
    assert "01-bad.sh wrote invalid JSON to $CROWBAR_WALL" in result.log


def test_timeout_kills_the_remote_script(make_ctx, sshd, tmp_path, gone):
    pid_file = tmp_path / "remote-child.pid"
    ctx = make_ctx({"01-hang.sh": f"echo started\nsleep 60 &\necho $! > {pid_file}\nwait\n"},
                   node=_node(sshd), attrs={"crowbar": {"script": {"timeout": 1}}})
    start = time.monotonic()
    result = ScriptJig().run(ctx)
    assert time.monotonic() - start < 10
    assert not result.ok
    assert "started" in result.log
    assert "<== 01-hang.sh killed: the run exceeded its timeout of 1 s" in result.log
    assert gone(int(pid_file.read_text()))


def test_missing_address_is_a_clear_failure(make_ctx):
    result = ScriptJig().run(make_ctx({"01.sh": "true\n"}, node=_node({})))
    assert not result.ok
    assert ("node d52-54-00-12-34-56.example.com has no crowbar/ssh/address attribute; set it with "
            "`crowbar attribs set ssh-address ADDR --node d52-54-00-12-34-56.example.com`") in result.log


def test_unreachable_node_fails_with_ssh_error(make_ctx, sshd):
    attrs = {"crowbar": {"ssh": {**sshd["crowbar"]["ssh"], "port": 1}}}  # nothing listens on port 1
    result = ScriptJig().run(make_ctx({"01.sh": "true\n"}, node=_node(attrs)))
    assert not result.ok
    assert "ssh session to" in result.log and "ended with exit code 255" in result.log


def test_a_leftover_background_process_does_not_hold_the_session(make_ctx, sshd, tmp_path, alive):
    pid_file = tmp_path / "daemon.pid"
    ctx = make_ctx({"01-daemon.sh": f"sleep 30 &\necho $! > {pid_file}\necho started daemon\n"},
                   node=_node(sshd))
    start = time.monotonic()
    result = ScriptJig().run(ctx)
    pid = int(pid_file.read_text())
    try:
        assert result.ok, result.log
        assert "started daemon" in result.log
        assert time.monotonic() - start < 10
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _without_keys(sshd: dict) -> dict:
    return {"crowbar": {"ssh": {k: v for k, v in sshd["crowbar"]["ssh"].items() if k != "host_keys"}}}


def _other_key(tmp_path) -> str:
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    return " ".join((tmp_path / "other.pub").read_text().split()[:2])


def test_the_reported_host_key_is_checked_and_a_different_one_refused(make_ctx, sshd, tmp_path):
    real = sshd["crowbar"]["ssh"]["host_keys"]
    # the installed node's reported keys (NodeInfo.host_keys) are what the annealer passes
    node = NodeInfo(id=7, name="n.example.com", admin=False, attrs=_without_keys(sshd), host_keys=tuple(real))
    result = ScriptJig().run(make_ctx({"01-ok.sh": "echo fine\n"}, node=node))
    assert result.ok, result.log
    # a node whose sshd answers with another key than it reported: refused before any script runs
    liar = NodeInfo(id=7, name="n.example.com", admin=False, attrs=_without_keys(sshd),
                    host_keys=(_other_key(tmp_path),))
    pid_file = tmp_path / "ran"
    result = ScriptJig().run(make_ctx({"01-never.sh": f"touch {pid_file}\n"}, node=liar))
    assert not result.ok
    assert not pid_file.exists()
    assert "SSH host key is not the one the node reported" in result.log, result.log


def test_a_node_without_reported_keys_is_trusted_on_first_use(make_ctx, sshd):
    result = ScriptJig().run(make_ctx({"01-ok.sh": "echo fine\n"}, node=_node(_without_keys(sshd))))
    assert result.ok, result.log
