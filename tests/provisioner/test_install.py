"""The OS installer's machinery: root disk choice and hints, the partition layout, the job script.

The script itself runs for real in the lab (tests/lab/test_lab_deploy.py); here its pieces are
checked as text and the sfdisk input is applied by the real sfdisk to a sparse file.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from crowbar.errors import InvalidInput
from crowbar.provisioner import install
from tests.jsonserver import JsonServer

GIB = 1 << 30
DISKS = [
    {"name": "sda", "size_bytes": 500 * GIB, "serial": "S1", "model": "BIG", "rotational": True, "removable": False},
    {"name": "sdb", "size_bytes": 120 * GIB, "serial": "S2", "model": "SSD", "rotational": False, "removable": False},
    {"name": "sdc", "size_bytes": 2 * GIB, "serial": "S3", "model": "DOM", "rotational": False, "removable": False},
    {"name": "sdd", "size_bytes": 64 * GIB, "serial": "U1", "model": "USB", "rotational": False, "removable": True},
]


def test_default_is_the_smallest_fixed_disk_of_at_least_4_gib():
    assert install.choose_root_disk(DISKS)["name"] == "sdb"  # sdc is too small, sdd removable


@pytest.mark.parametrize("hints, expected", [
    ({"name": "sda"}, "sda"),
    ({"name": "/dev/sda"}, "sda"),
    ({"serial": "S1"}, "sda"),
    ({"model": "DOM"}, "sdc"),              # a hint may pick a disk the default would not
    ({"size": 500}, "sda"),
    ({"size": ">= 100"}, "sdb"),            # the smallest of those that match
    ({"size": "< 100"}, "sdc"),
    ({"rotational": False, "size": ">= 100"}, "sdb"),
    ({"rotational": "true"}, "sda"),
])
def test_root_device_hints(hints, expected):
    assert install.choose_root_disk(DISKS, hints)["name"] == expected


def test_hints_that_match_nothing_name_the_disks():
    with pytest.raises(InvalidInput) as err:
        install.choose_root_disk(DISKS, {"serial": "nope"})
    assert "no disk matches" in err.value.message and "sda (500.0 GiB, serial S1)" in err.value.message


@pytest.mark.parametrize("hints, words", [
    ({"wwn": "x"}, "unknown root device hint"),
    ({"size": "big"}, "expected GiB"),
    ("sda", "must be an object"),
])
def test_bad_hints_are_refused(hints, words):
    with pytest.raises(InvalidInput, match=words):
        install.choose_root_disk(DISKS, hints)


def test_no_disk_big_enough():
    with pytest.raises(InvalidInput, match="no disk of at least 4 GiB"):
        install.choose_root_disk([{"name": "vda", "size_bytes": 3 * GIB}])
    with pytest.raises(InvalidInput, match="no disks"):
        install.choose_root_disk([])


def test_partition_names():
    assert install.partition_device("/dev/vda", 3) == "/dev/vda3"
    assert install.partition_device("/dev/nvme0n1", 3) == "/dev/nvme0n1p3"
    assert install.partition_device("/dev/mmcblk0", 2) == "/dev/mmcblk0p2"


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (Debian package fdisk) is not installed")
def test_the_layout_applied_by_the_real_sfdisk(tmp_path):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(4 * GIB)
    subprocess.run(["sfdisk", "-q", str(disk)], input=install.sfdisk_script(), text=True, check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert [p["type"] for p in parts] == [install.BIOS_BOOT, install.EFI_SYSTEM, install.LINUX_FS]
    assert [p["name"] for p in parts] == ["bios", "esp", "root"]
    sector = table.get("sectorsize", 512)
    assert parts[0]["start"] * sector == 1 << 20 and parts[0]["size"] * sector == 1 << 20
    assert parts[1]["size"] * sector == 255 << 20
    assert parts[2]["start"] * sector == 257 << 20
    # the root partition takes the rest, up to GPT's backup at the end
    root_bytes = parts[2]["size"] * sector
    assert 0 <= install.root_space(4 * GIB) - root_bytes < 1 << 20


def _plan(**changes) -> install.InstallPlan:
    values = dict(node="n1.example.com", disk="/dev/vda", disk_bytes=4 * GIB, firmware="bios",
                  image_path="/boot/os/debian-12/abc/root.img.gz", image_size=200 << 20,
                  image_sha256="f" * 64, fs_size=600 << 20, progress_path="/api/v2/agent/progress/7",
                  seed={"meta-data": "instance-id: x\n", "user-data": "#cloud-config\n",
                        "network-config": "version: 2\n"})
    values.update(changes)
    return install.InstallPlan(**values)


def test_the_script_checks_the_checksum_before_the_bootloader():
    script = install.install_script(_plan())
    assert script.index("image checksum mismatch") < script.index("grub-install")
    assert f'!= {"f" * 64}' in script
    assert "--target=i386-pc" in script and "x86_64-efi" not in script
    assert '"$CROWBAR_URL"/boot/os/debian-12/abc/root.img.gz' in script


@pytest.mark.parametrize("compression, command", [("zstd", "zstd -dcq"), ("gzip", "gunzip -c")])
def test_the_image_is_decompressed_as_its_manifest_says_by_a_program_the_script_checks_first(compression, command):
    script = install.install_script(_plan(compression=compression))
    assert f'| tee /tmp/image.fifo | {command} | dd of="$ROOT"' in script
    program = command.split()[0]
    assert script.index(f"command -v {program} >/dev/null") < script.index("phase partition")  # before any write
    assert f"has no {program} for a {compression} image" in script


def test_uefi_gets_the_esp_and_grub_efi():
    script = install.install_script(_plan(firmware="uefi"))
    assert "mkfs.vfat -F 32 -n ESP /dev/vda2" in script
    assert "--target=x86_64-efi --efi-directory=/boot/efi" in script and "--removable" in script
    assert "i386-pc" not in script


def test_the_seed_lands_in_the_target_and_the_token_is_not_in_the_script():
    script = install.install_script(_plan(seed={"user-data": "#cloud-config\nhostname: n1\n"}))
    assert "cat > $T/var/lib/cloud/seed/nocloud/user-data <<'CROWBAR_EOF'\n#cloud-config\nhostname: n1\n" in script
    assert '"$CROWBAR_TOKEN" > $T/etc/crowbar/node.conf' in script


def test_a_seed_holding_the_marker_cannot_end_the_heredoc_early():
    script = install.install_script(_plan(seed={"user-data": "CROWBAR_EOF\nrm -rf /\n"}))
    assert "<<'CROWBAR_EOF_'" in script


@pytest.mark.parametrize("changes, words", [
    ({"firmware": "coreboot"}, "expected bios or uefi"),
    ({"fs_size": 5 * GIB}, "does not fit"),
    ({"compression": "lzip"}, "image compression 'lzip': expected zstd or gzip"),
])
def test_refused_plans(changes, words):
    with pytest.raises(InvalidInput, match=words):
        install.install_script(_plan(**changes))


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
def test_the_script_is_valid_busybox_sh(tmp_path):
    for firmware in ("bios", "uefi"):
        path = tmp_path / f"{firmware}.sh"
        path.write_text(install.install_script(_plan(firmware=firmware)))
        done = subprocess.run(["busybox", "sh", "-n", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_nodes_ssh_enters_the_lab_namespace_only_for_the_labs_server(tmp_path, monkeypatch):
    from crowbar import config
    from crowbar.cli.install import ssh_command

    node = {"name": "n1", "state": "ready", "hints": {"crowbar": {"ssh": {"address": "192.168.124.81",
                                                                          "key": str(tmp_path / "nokey")}}}}
    argv = ssh_command(node, None, ("hostname",), tmp_path / "known_hosts", "cblab-abc")
    assert argv[:4] == ["ip", "netns", "exec", "cblab-abc"] and argv[-3:] == ["root@192.168.124.81", "--", "hostname"]
    assert "-i" not in argv  # the key file is not readable here: ssh's own keys
    assert ssh_command(node, None, (), tmp_path / "known_hosts")[0] == "ssh"
    monkeypatch.setattr(config, "lab_endpoint", lambda directory=None: "unix:///lab/api.sock")
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "lab.json").write_text('{"namespace": "cblab-abc"}')
    assert config.lab_namespace("unix:///lab/api.sock", lab) == "cblab-abc"
    assert config.lab_namespace("http://127.0.0.1:3000", lab) is None
    with pytest.raises(Exception, match="no SSH address yet"):
        ssh_command({"name": "n2", "state": "installing", "hints": {}}, None, (), tmp_path / "k")


def test_nodes_ssh_checks_the_host_keys_the_node_reported_strictly(tmp_path):
    from crowbar.cli.install import ssh_command

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcM0YkzJmO2z1rGfXh0n3b1nA6Q4cE0eWn8d2Vq9mKx"
    node = {"name": "n1.crowbar.local", "state": "ready", "install": {"host_keys": [key]},
            "hints": {"crowbar": {"ssh": {"address": "192.168.124.81", "port": 2222}}}}
    argv = ssh_command(node, None, ("hostname",), tmp_path / "known_hosts")
    known = tmp_path / "known_hosts.d" / "n1.crowbar.local"
    assert f"UserKnownHostsFile={known}" in argv and "StrictHostKeyChecking=yes" in argv
    assert known.read_text() == f"[192.168.124.81]:2222 {key}\n"
    # reinstalled: new keys replace the old ones, nothing stale is kept
    node["install"]["host_keys"] = [key.replace("AAAAIBc", "AAAAIXc")]
    node["hints"]["crowbar"]["ssh"]["port"] = 22
    ssh_command(node, None, (), tmp_path / "known_hosts")
    assert known.read_text() == f"192.168.124.81 {key.replace('AAAAIBc', 'AAAAIXc')}\n"
    # none reported (an old image, or a node set up by hand): trust on first use, in the shared file
    del node["install"]["host_keys"]
    argv = ssh_command(node, None, (), tmp_path / "known_hosts")
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in argv and "StrictHostKeyChecking=accept-new" in argv


def _reporter(script: str) -> str:
    """The script's reporting functions (NEXT, phase, report), cut from the script as it is."""
    start = script.index("NEXT=0")
    return script[start:script.index("cleanup() {")]


@pytest.mark.parametrize("pause, said", [(0, ["check-disk", "partition", "write-image", "write-image", "verify-image"]),
                                         (100, ["check-disk"])])
def test_the_script_reports_at_the_pace_the_server_answers(tmp_path, pause, said):
    """Each report's answer carries `next`: 0 lets every phase and tick out at once; a pause holds
    back what comes within it (the job's output still has every phase line)."""
    with JsonServer(lambda body: {"node": "n1", "phase": body["phase"], "next": pause}) as server:
        path = tmp_path / "report.sh"
        path.write_text(_reporter(install.install_script(_plan())) +
                        'phase check-disk\nphase partition\nphase write-image "" 0\n'
                        'phase write-image "" 1048576\nphase verify-image "" 629145600\n')
        bin_dir = tmp_path / "bin"  # busybox's applets only, as in the discovery image
        bin_dir.mkdir()
        for applet in ("wget", "cut", "sed"):
            (bin_dir / applet).symlink_to(shutil.which("busybox"))
        env = {"PATH": str(bin_dir), "CROWBAR_URL": server.url, "CROWBAR_TOKEN": "tok-1"}
        done = subprocess.run([shutil.which("busybox"), "sh", "-eu", str(path)], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("crowbar-install: ") == 5  # every phase line, said or not
        assert [p["body"]["phase"] for p in server.posts] == said
        assert {p["path"] for p in server.posts} == {"/api/v2/agent/progress/7"}
        assert {p["auth"] for p in server.posts} == {"Bearer tok-1"}
        if pause == 0:
            assert [p["body"]["bytes"] for p in server.posts][2:] == [0, 1048576, 629145600]
            assert {p["body"]["total"] for p in server.posts} == {600 << 20}
