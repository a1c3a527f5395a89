"""The discovery agent's own functions (crowbar/agent/agent.sh, sourced into the host's busybox sh)
against the real server over HTTP: it posts the nonce from the kernel command line, a known machine
without one is refused and boots again, and a revoked token sends it back to discovery.

Nothing touches the host: the agent's "reboot" and `sleep` are replaced by shell functions, its
/sys is a fake tree, its /proc/cmdline a file, and PATH holds busybox applets without reboot."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

import crowbar.agent
from crowbar.api.settings import AppSettings
from discoverykit import Served, nonce_in
from test_image_agent import fake_sysfs

BUSYBOX = Path("/bin/busybox")
AGENT = Path(crowbar.agent.__file__).parent
MAC = "52:54:00:00:00:01"  # eth0 in fake_sysfs
pytestmark = pytest.mark.skipif(not BUSYBOX.is_file(), reason="busybox-static is not installed")

SCRIPT = """
. "$AGENT_DIR/agent.sh"
restart_machine() { echo "RESTART-MACHINE"; exit 42; }
sleep() { :; }
URL=$(cmdline_arg crowbar.url)
NONCE=$(cmdline_arg crowbar.nonce)
echo eth0 > "$STATE/boot_nic"
case $1 in
register) register; echo "NODE=$NODE"; echo "TOKEN=$TOKEN" ;;
first-wait) sleep() { echo "WAITED=$1"; exit 5; }; register ;;
follow) TOKEN=$2; follow; echo "FOLLOW-ENDED" ;;
esac
"""


def agent_env(tmp_path: Path) -> dict:
    """The environment the agent's functions run in under `tmp_path`: busybox applets without
    reboot and the network tools, a fake /sys, a state directory, /proc/cmdline at tmp_path/cmdline."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    subprocess.run([str(BUSYBOX), "--install", "-s", str(bin_dir)], check=True)
    for dangerous in ("reboot", "poweroff", "halt", "ip", "udhcpc", "ifconfig", "route"):
        (bin_dir / dangerous).unlink(missing_ok=True)
    fake_sysfs(tmp_path / "sys")
    (tmp_path / "state").mkdir()
    return {"PATH": str(bin_dir), "AGENT_DIR": str(AGENT), "CROWBAR_LIB": str(AGENT),
            "CROWBAR_SYSFS": str(tmp_path / "sys"), "CROWBAR_STATE": str(tmp_path / "state"),
            "CROWBAR_CMDLINE": str(tmp_path / "cmdline")}


@pytest.fixture
def machine(tmp_path):
    """Runs `register` or `follow TOKEN` of the agent with a kernel command line."""
    env = agent_env(tmp_path)

    def run(cmdline: str, *args: str) -> subprocess.CompletedProcess:
        (tmp_path / "cmdline").write_text(f"console=ttyS0 {cmdline} quiet\n")
        return subprocess.run([str(BUSYBOX), "sh", "-c", SCRIPT, "agent-test", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    return run


def values(output: str) -> dict:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_the_agent_proves_its_boot_with_the_nonce_and_boots_again_when_refused(db, machine):
    sock = socket.create_server(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    served = Served(AppSettings(db=db), [sock])
    http = httpx.Client(base_url=url)
    try:
        first = machine(f"crowbar.url={url}", "register")
        assert first.returncode == 0, first.stdout + first.stderr
        token = values(first.stdout)["TOKEN"]
        assert values(first.stdout)["NODE"] == f"d{MAC.replace(':', '-')}.crowbar.local"

        # Booted again without a nonce (say, by a script served before the node existed): refused
        # three times, then the machine boots again; the node and its token are untouched.
        again = machine(f"crowbar.url={url}", "register")
        assert again.returncode == 42 and "RESTART-MACHINE" in again.stdout, again.stdout + again.stderr
        assert again.stdout.count("refused this boot's discovery (HTTP 403") == 3
        assert http.get("/api/v2/agent/next", headers={"authorization": f"Bearer {token}"}).status_code == 200

        # The boot script the server serves now carries a nonce; the agent posts it and is found.
        script = http.get(f"/boot/{MAC.replace(':', '-')}.ipxe").text
        nonce = nonce_in(script)
        assert nonce
        found = machine(f"crowbar.url={url} crowbar.nonce={nonce}", "register")
        assert found.returncode == 0, found.stdout + found.stderr
        assert values(found.stdout)["NODE"] == values(first.stdout)["NODE"]
        assert values(found.stdout)["TOKEN"] != token

        # The old token is revoked: an agent still holding it goes back to discovery at once.
        followed = machine(f"crowbar.url={url}", "follow", token)
        assert followed.returncode == 0 and "FOLLOW-ENDED" in followed.stdout, followed.stdout + followed.stderr
        assert "no longer knows this node's token" in followed.stdout
    finally:
        http.close()
        served.close()


def test_the_agent_waits_longer_when_the_server_takes_no_new_machines(db, machine):
    from crowbar.provisioner.discovery import TokenBucket

    sock = socket.create_server(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    served = Served(AppSettings(db=db, discovery_limit=TokenBucket(rate=0.001, burst=0)), [sock])
    try:
        limited = machine(f"crowbar.url={url}", "first-wait")
        assert limited.returncode == 5 and "HTTP 429" in limited.stdout, limited.stdout + limited.stderr
        assert 20 <= int(values(limited.stdout)["WAITED"]) < 40
    finally:
        served.close()


def test_sourcing_the_agent_runs_nothing(tmp_path):
    env = {"PATH": os.environ["PATH"], "CROWBAR_STATE": str(tmp_path / "state"),
           "CROWBAR_CMDLINE": "/nonexistent"}
    done = subprocess.run([str(BUSYBOX), "sh", "-c", f'. "{AGENT}/agent.sh"; echo sourced'], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "sourced\n", done.stdout + done.stderr
