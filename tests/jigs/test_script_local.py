"""The script jig on the admin node: scripts run locally in the run's workdir."""

from __future__ import annotations

import os
import signal
import sys
import time

from crowbar.jigs import get_jig
from crowbar.jigs.script import ScriptJig

WALL_ENV = """\
#!/bin/sh
set -e
touch step1
cat > "$CROWBAR_WALL" <<EOF
{"shared": {"first": 1, "over": "first"},
 "env": {"node": "$CROWBAR_NODE", "role": "$CROWBAR_ROLE", "run": "$CROWBAR_RUN_ID", "pwd": "$PWD"},
 "attrs": $(cat "$CROWBAR_ATTRS")}
EOF
echo first done
"""

# No shebang: runs with /bin/sh. Writes a fresh wall file, which must not lose the first one's keys.
SECOND = """\
set -e
test -f step1
echo '{"shared": {"second": 2, "over": "second"}, "second": true}' > "$CROWBAR_WALL"
echo second done >&2
"""


def test_registered_under_its_name():
    assert isinstance(get_jig("script"), ScriptJig)


def test_scripts_run_in_order_with_env_attrs_and_merged_wall(make_ctx):
    attrs = {"crowbar": {"script": {"timeout": 30}}, "ntp": {"servers": ["a", "b"]}}
    ctx = make_ctx({"01-first.sh": WALL_ENV, "02-second": SECOND}, attrs=attrs, role="ntp-server")
    result = ScriptJig().run(ctx)
    assert result.ok, result.log
    assert result.wall == {
        "shared": {"first": 1, "second": 2, "over": "second"}, "second": True, "attrs": attrs,
        "env": {"node": "admin.example.com", "role": "ntp-server", "run": str(ctx.run_id),
                "pwd": str(ctx.workdir)}}
    log = result.log
    assert log.index("==> 01-first.sh") < log.index("first done") < log.index("<== 01-first.sh exited with 0")
    assert log.index("<== 01-first.sh") < log.index("==> 02-second") < log.index("second done")
    assert log.rstrip().endswith("<== 02-second exited with 0")


def test_shebang_picks_the_interpreter(make_ctx):
    script = (f"#!{sys.executable}\nimport json, os\n"
              "json.dump({'py': True}, open(os.environ['CROWBAR_WALL'], 'w'))\n")
    result = ScriptJig().run(make_ctx({"10-python": script}))
    assert result.ok, result.log
    assert result.wall == {"py": True}


def test_nonzero_exit_stops_the_run_and_keeps_the_log(make_ctx):
    ctx = make_ctx({"01-ok.sh": "echo fine\n",
                    "02-fail.sh": "echo to stdout\necho to stderr >&2\nexit 3\n",
                    "03-never.sh": "touch ran\n"})
    result = ScriptJig().run(ctx)
    assert not result.ok
    assert result.wall == {}
    for line in ("==> 01-ok.sh", "fine", "==> 02-fail.sh", "to stdout", "to stderr",
                 "<== 02-fail.sh exited with 3"):
        assert line in result.log
    assert "03-never" not in result.log
    assert not (ctx.workdir / "ran").exists()


def test_invalid_wall_json_fails(make_ctx):
    ctx = make_ctx({"01-bad.sh": "echo 'not json' > \"$CROWBAR_WALL\"\n", "02-never.sh": "touch ran\n"})
    result = ScriptJig().run(ctx)
    assert not result.ok
    assert "01-bad.sh wrote invalid JSON to $CROWBAR_WALL" in result.log
    assert not (ctx.workdir / "ran").exists()


def test_wall_must_be_an_object(make_ctx):
    result = ScriptJig().run(make_ctx({"01-list.sh": "echo '[1, 2]' > \"$CROWBAR_WALL\"\n"}))
    assert not result.ok
    assert "wrote a JSON list to $CROWBAR_WALL; it must be an object" in result.log


def test_timeout_kills_the_whole_process_group(make_ctx, gone):
    ctx = make_ctx({"01-hang.sh": "echo started\nsleep 60 &\necho $! > child.pid\nwait\n",
                    "02-never.sh": "touch ran\n"},
                   attrs={"crowbar": {"script": {"timeout": 1}}})
    start = time.monotonic()
    result = ScriptJig().run(ctx)
    assert time.monotonic() - start < 10
    assert not result.ok
    assert "started" in result.log
    assert "<== 01-hang.sh killed: the run exceeded its timeout of 1 s" in result.log
    assert gone(int((ctx.workdir / "child.pid").read_text()))
    assert not (ctx.workdir / "ran").exists()


def test_bad_timeout_and_bad_names_fail_before_running(make_ctx):
    bad_timeout = {"crowbar": {"script": {"timeout": "soon"}}}
    result = ScriptJig().run(make_ctx({"01.sh": "true\n"}, attrs=bad_timeout))
    assert not result.ok and "crowbar/script/timeout must be a positive number" in result.log
    result = ScriptJig().run(make_ctx({"../escape.sh": "true\n"}))
    assert not result.ok and "'../escape.sh' is not a plain file name" in result.log


def test_no_scripts_is_success(make_ctx):
    assert ScriptJig().run(make_ctx({})).ok


def test_a_leftover_background_process_does_not_hold_the_run(make_ctx, alive):
    ctx = make_ctx({"01-daemon.sh": "sleep 30 &\necho $! > daemon.pid\necho started daemon\n"})
    start = time.monotonic()
    result = ScriptJig().run(ctx)
    pid = int((ctx.workdir / "daemon.pid").read_text())
    try:
        assert result.ok, result.log
        assert "started daemon" in result.log
        assert time.monotonic() - start < 10
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
