"""Heterogeneous OS end to end, through the CLI only: two qemu VMs whose inventories differ (one
BIOS, one UEFI) get Debian 12 and Debian 13 by rule, side by side, from the real images (mmdebstrap,
built once and cached by content); each says so over SSH in /etc/os-release. `os rules set`,
`explain`, `test` and `nodes list --tag` against the live server. Then the Debian 12 node is
upgraded: a reinstall with Debian 13, and once it is ready again its noderoles have run again.
"""

from __future__ import annotations

import time

import pytest

from test_lab_deploy import _missing_deploy, _ssh
from test_lab_e2e import Cli

OSES = ("debian-12", "debian-13")
RULES = """\
rules:
  - name: uefi-machines
    when: "firmware == 'uefi'"
    os: debian-13
    tags: [uefi, trixie]
default:
  os: debian-12
  tags: [bookworm]
"""

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing_deploy() is not None, reason=str(_missing_deploy()))]


@pytest.fixture
def cli(tmp_path):
    """The CLI with its own lab, and an image store made of the cached Debian 12 and 13 images
    (built here when the cache lacks one)."""
    from crowbar import config
    from crowbar.cli import local

    store = tmp_path / "cache" / "os"
    for name in OSES:
        # the image of the recipe and node files as they are now (built when the stable cache lacks it;
        # the newest cached one may be older than this tree's node-side files)
        image = local.build_os_image(config.os_image_dir(), name, lambda *a: None)
        (store / name).mkdir(parents=True)
        (store / name / image.digest).symlink_to(image.path.parent)
    cli = Cli(tmp_path)
    cli.env["CROWBAR_CACHE_DIR"] = str(tmp_path / "cache")
    yield cli
    done = cli("lab", "down", ok=False, timeout=180)
    if done.returncode != 0 or (cli.lab_dir / "lab.json").exists():
        from crowbar.lab.lab import Lab

        Lab(cli.lab_dir).down()


def _runs(cli, node: str) -> dict[int, int]:
    return {nr["id"]: len(cli.json("noderoles", "log", str(nr["id"]), "--all"))
            for nr in cli.json("noderoles", "list", "--node", node)}


def _wait_active(cli, node: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = cli.json("noderoles", "list", "--node", node)
        if rows and all(nr["state"] == "active" for nr in rows):
            return rows
        assert time.monotonic() < deadline, f"noderoles of {node}: {[(r['role'], r['state']) for r in rows]}"
        time.sleep(3)


def test_two_nodes_get_debian_12_and_13_by_rule_and_one_is_upgraded(cli, tmp_path):
    cli("lab", "up", "--nodes", "2", "--firmware", "bios,uefi", "--disk", "4", "--wait", "--timeout", "400",
        timeout=500)
    vms = {vm["name"]: vm["node"] for vm in cli.json("lab", "status")["vms"]}
    bios, uefi = vms["vm1"], vms["vm2"]

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    # tried before it is saved: the verdicts, nothing written
    tried = cli.json("os", "rules", "test", str(rules_file), "--node", uefi)
    assert not tried["saved"] and tried["choice"]["os"] == "debian-13"
    assert cli.json("os", "rules", "show")["rules"] == []
    cli("os", "rules", "set", str(rules_file))
    assert cli("os", "rules", "show").stdout.strip() == RULES.strip()
    explained = cli.json("os", "rules", "explain", bios)
    assert explained["default_applies"] and explained["choice"]["os"] == "debian-12"
    assert explained["rules"][0]["why"] == ['firmware == `"uefi"`: false (firmware = "bios")']
    table = cli("os", "rules", "explain", uefi).stdout
    assert "CHOSEN" in table and "os debian-13" in table
    assert [n["name"] for n in cli.json("nodes", "list", "--tag", "trixie")] == [uefi]
    assert [n["name"] for n in cli.json("nodes", "list", "--tag", "bookworm")] == [bios]

    for name in (bios, uefi):
        cli("nodes", "allocate", name)
    cli("nodes", "deploy", bios, uefi, "--wait", "--timeout", "1500", timeout=1600)  # no --os: the rules
    for name, release in ((bios, "12 (bookworm)"), (uefi, "13 (trixie)")):
        node = cli.json("nodes", "show", name)
        assert node["state"] == "ready" and node["os"] == f"debian-{release[:2]}"
        assert f'PRETTY_NAME="Debian GNU/Linux {release}"' in _ssh(cli, name, "cat /etc/os-release")
        assert _ssh(cli, name, "hostname -f") == name

    # the upgrade: the Debian 12 node reinstalled with Debian 13; its noderoles run again after
    before = _runs(cli, bios)
    assert before and all(n >= 1 for n in before.values())
    cli("nodes", "reinstall", bios, "--os", "debian-13", "--wait", "--timeout", "1200", timeout=1300)
    assert 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"' in _ssh(cli, bios, "cat /etc/os-release")
    _wait_active(cli, bios, 300)
    after = _runs(cli, bios)
    assert all(after[i] == before[i] + 1 for i in before), (before, after)
