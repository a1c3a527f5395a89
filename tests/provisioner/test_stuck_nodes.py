"""Stuck states time out to `problem` with the reason; the server's watchdog loop moves them."""

from datetime import datetime, timedelta, timezone

from crowbar.db.models import Event, Node
from crowbar.server.watchdog import Watchdog
from crowbar.services import nodes, provisioning


def test_a_node_stuck_installing_goes_to_problem_with_the_reason(db):
    with db.session() as s:
        info = nodes.create_node(s, "stuck.example.com")
        fresh = nodes.create_node(s, "fresh.example.com")
        for name, age in (("stuck.example.com", 120), ("fresh.example.com", 5)):
            node = s.query(Node).filter_by(name=name).one()
            node.state, node.state_changed_at = "installing", datetime.now(timezone.utc) - timedelta(minutes=age)
    Watchdog(db).step()  # what the server's watchdog loop does every round
    with db.session() as s:
        stuck = s.get(Node, info["id"])
        assert stuck.state == "problem" and "installing" in stuck.state_reason
        assert stuck.bootenv == "discovery"  # a problem node boots something that touches no disk
        assert s.get(Node, fresh["id"]).state == "installing"
        event = s.query(Event).filter_by(object_type="node", object_id=info["id"], action="lifecycle").one()
        assert (event.from_state, event.to_state, event.actor) == ("installing", "problem", "timeout")
        assert provisioning.expire_stuck(s) == []  # problem waits for a person: it never times out


def test_every_timed_state_moves_just_past_its_limit_and_not_just_before(db):
    """The watchdog reads only the nodes past their state's limit (in SQL); the limits are
    lifecycle.TIMEOUTS, each one checked at its edges."""
    from crowbar.provisioner import lifecycle

    now = datetime.now(timezone.utc)
    ages = {}
    with db.session() as s:
        for i, (state, limit) in enumerate(lifecycle.TIMEOUTS.items()):
            for side, age in (("in", limit - timedelta(seconds=30)), ("out", limit + timedelta(seconds=30))):
                info = nodes.create_node(s, f"t{i}-{side}.example.com")
                node = s.get(Node, info["id"])
                node.state, node.state_changed_at = state, now - age
                ages[node.name] = (state, side)
    with db.session() as s:
        moved = provisioning.expire_stuck(s, now=now)
    assert sorted(moved) == sorted(name for name, (_, side) in ages.items() if side == "out")
    with db.session() as s:
        for name, (state, side) in ages.items():
            assert s.query(Node).filter_by(name=name).one().state == ("problem" if side == "out" else state)


def test_build_discovery_image_from_the_cli(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    import pytest

    from crowbar.provisioner.image import default_kernel_version

    try:
        default_kernel_version()
    except Exception as exc:  # no kernel package: the image tests in test_image.py say the same
        pytest.skip(f"needs Debian's linux-image-amd64 in /boot: {exc}")
    if not shutil.which("busybox"):
        pytest.skip("needs busybox-static for the initramfs")
    argv = [sys.executable, "-m", "crowbar.cli.main", "images", "build-discovery", "--cache", str(tmp_path), "-o", "json"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    image = json.loads(first.stdout)
    assert image["initrd_bytes"] > 1_000_000 and (tmp_path / image["digest"] / "vmlinuz").exists()
    again = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout)
    assert again["digest"] == image["digest"]  # cached by content
    bad = subprocess.run([*argv[:5], "--kernel", "0.0-none", "--cache", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: kernel 0.0-none is not installed")
    assert "Traceback" not in bad.stderr
