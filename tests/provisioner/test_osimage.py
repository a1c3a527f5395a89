"""The OS image builder without the network: recipes, the host's mirror, clear errors, and a whole
build with mmdebstrap replaced by a tiny tree (the real mmdebstrap build runs in the lab tests,
tests/lab/test_lab_deploy.py, and the demo): the filesystem, compression, manifest and the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading

import pytest

from crowbar.errors import NotFound
from crowbar.provisioner import osimage


def test_the_catalog_has_debian_12_as_data():
    recipe = osimage.recipe("debian-12")
    assert recipe.suite == "bookworm" and recipe.kernel == "linux-image-amd64"
    assert {"openssh-server", "python3", "cloud-init", "grub-pc-bin", "grub-efi-amd64-bin"} <= set(recipe.packages)
    assert recipe.builder == "mmdebstrap" and recipe.installer == "image"
    with pytest.raises(NotFound, match="the catalog has debian-12"):
        osimage.recipe("windows-11")


def test_a_recipe_is_a_file(tmp_path):
    (tmp_path / "mini-1.toml").write_text('name = "mini-1"\nversion = "1"\nsuite = "bookworm"\n'
                                          'kernel = "linux-image-amd64"\npackages = ["bash"]\n')
    assert set(osimage.recipes(tmp_path)) == {"mini-1"}
    (tmp_path / "bad.toml").write_text('name = "bad"\n')
    with pytest.raises(osimage.OsImageError, match="missing version, suite, packages, kernel"):
        osimage.recipes(tmp_path)


def test_the_host_mirror_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert osimage.host_mirror(tmp_path) == "http://mirror.example/debian"
    other = tmp_path / "other"
    (other / "sources.list.d").mkdir(parents=True)
    (other / "sources.list").write_text("# comment\ndeb [arch=amd64] http://one.example/debian bookworm main\n")
    assert osimage.host_mirror(other) == "http://one.example/debian"
    empty = tmp_path / "empty"
    (empty / "sources.list.d").mkdir(parents=True)
    with pytest.raises(osimage.OsImageError, match="no Debian mirror"):
        osimage.host_mirror(empty)


def test_a_missing_mmdebstrap_is_one_clear_line(tmp_path, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(osimage.shutil, "which", lambda name: None if name == "mmdebstrap" else real(name))
    with pytest.raises(osimage.OsImageError, match="mmdebstrap is not installed: apt-get install mmdebstrap"):
        osimage.build(tmp_path, "debian-12")


def test_a_missing_zstd_is_one_clear_line(tmp_path, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(osimage.shutil, "which", lambda name: None if name == "zstd" else real(name) or name)
    with pytest.raises(osimage.OsImageError, match="zstd is not installed: apt-get install zstd"):
        osimage.build(tmp_path, "debian-12")


def test_an_image_built_before_zstd_still_lists_by_its_manifest_and_an_unknown_compression_does_not(tmp_path):
    for name, compression, file in (("old", "gzip", "root.img.gz"), ("new", "zstd", "root.img.zst"),
                                    ("odd", "lzip", "root.img.lz")):
        folder = tmp_path / name / (name[0] * 64)
        folder.mkdir(parents=True)
        (folder / file).write_bytes(b"image")
        manifest = {"name": name, "digest": name[0] * 64, "compression": compression}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    found = {image.name: image.path.name for image in osimage.built(tmp_path)}
    assert found == {"old": "root.img.gz", "new": "root.img.zst"}


def test_an_unreachable_mirror_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (Debian package mmdebstrap): the check comes after it")
    with pytest.raises(osimage.OsImageError, match=f"cannot reach the Debian mirror http://127.0.0.1:{port}"):
        osimage.build(tmp_path, "debian-12", mirror=f"http://127.0.0.1:{port}/debian")


@pytest.mark.skipif(shutil.which("mke2fs") is None or shutil.which("dpkg-query") is None,
                    reason="needs mke2fs (e2fsprogs) and dpkg-query (dpkg)")
def _tiny_tree(root):
    """What the fake mmdebstrap leaves: enough of a Debian root for the rest of the build."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-6.1.0-test").write_bytes(b"kernel")
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("secret of the build host")
    (root / "etc" / "machine-id").write_text("0123456789abcdef\n")
    (root / "etc" / "hostname").write_text("buildhost\n")
    (root / "etc" / "default").mkdir()
    (root / "etc" / "default" / "grub").write_text('GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=""\n')
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2\nArchitecture: amd64\n\n"
        "Package: openssh-server\nStatus: install ok installed\nVersion: 1:9.2p1-2\nArchitecture: amd64\n")


def test_a_build_makes_a_checked_image_with_a_manifest_and_is_cached(tmp_path, monkeypatch):
    calls = []

    def fake_mmdebstrap(item, mirror, root, report):
        calls.append(mirror)
        _tiny_tree(root)

    monkeypatch.setattr(osimage, "_mmdebstrap", fake_mmdebstrap)
    monkeypatch.setattr(osimage, "mirror_state", lambda mirror, suite, timeout=20: b"InRelease of " + suite.encode())
    monkeypatch.setattr(osimage.shutil, "which", lambda name: f"/usr/bin/{name}")
    steps = []
    image = osimage.build(tmp_path, "debian-12", lambda step, done, total: steps.append(step),
                          mirror="http://mirror.example/debian")
    m = image.manifest
    assert image.path == tmp_path / "debian-12" / image.digest / "root.img.zst" and m["compression"] == "zstd"
    assert m["name"] == "debian-12" and m["version"] == "12" and m["arch"] == "amd64" and m["kernel"] == "6.1.0-test"
    assert m["sha256"] == hashlib.sha256(image.path.read_bytes()).hexdigest() and m["size"] == image.path.stat().st_size
    assert m["packages"] == [{"name": "bash", "version": "5.2.15-2"}, {"name": "openssh-server", "version": "1:9.2p1-2"}]
    assert m["fs_uuid"] == osimage.image_uuid(image.digest) and m["built_at"] and m["build_seconds"] >= 0
    assert {"mirror", "node files", "filesystem", "compress", "checksum"} <= set(steps)
    assert json.loads((image.path.parent / "manifest.json").read_text()) == m

    raw = tmp_path / "root.img"
    raw.write_bytes(subprocess.run(["zstd", "-dcq", str(image.path)], capture_output=True, check=True).stdout)
    assert raw.stat().st_size == m["fs_size"]
    blkid = subprocess.run(["blkid", "-o", "export", str(raw)], capture_output=True, text=True).stdout
    assert f"UUID={m['fs_uuid']}" in blkid and "TYPE=ext4" in blkid

    def cat(path):
        return subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True).stdout

    def ls(path):
        return subprocess.run(["debugfs", "-R", f"ls {path}", str(raw)], capture_output=True, text=True).stdout

    assert cat("/etc/fstab") == f"UUID={m['fs_uuid']} / ext4 errors=remount-ro 0 1\n"
    assert f"search --no-floppy --fs-uuid --set=root {m['fs_uuid']}" in cat("/boot/grub/grub.cfg")
    assert "console=ttyS0,115200n8" in cat("/boot/grub/grub.cfg")
    assert cat("/etc/machine-id") == ""                      # each node makes its own
    assert "ssh_host_ed25519_key" not in ls("/etc/ssh")      # no host key of the build host
    assert "hostname" not in ls("/etc").split()
    assert "crowbar-callhome" in ls("/usr/lib/crowbar")
    assert "crowbar-callhome.service" in ls("/etc/systemd/system/multi-user.target.wants")

    # the same inputs: the cache answers, mmdebstrap does not run again
    again = osimage.build(tmp_path, "debian-12", mirror="http://mirror.example/debian")
    assert again.digest == image.digest and len(calls) == 1
    # another mirror state: a new image
    monkeypatch.setattr(osimage, "mirror_state", lambda mirror, suite, timeout=20: b"a newer InRelease")
    assert osimage.build(tmp_path, "debian-12", mirror="http://mirror.example/debian").digest != image.digest
    assert len(calls) == 2 and len(osimage.built(tmp_path)) == 2
    assert osimage.delete(tmp_path, "debian-12") and osimage.built(tmp_path) == []


def test_two_builds_of_one_os_at_once_make_one_image_and_neither_removes_it(tmp_path, monkeypatch):
    """Two builders of one OS at once (two test workers, two `crowbar os build`): the second waits
    for the first and finds its image; nothing the first returned is removed under it."""
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_mmdebstrap(item, mirror, root, report):
        calls.append(mirror)
        started.set()
        assert release.wait(30)
        _tiny_tree(root)

    monkeypatch.setattr(osimage, "_mmdebstrap", slow_mmdebstrap)
    monkeypatch.setattr(osimage, "mirror_state", lambda mirror, suite, timeout=20: b"InRelease")
    monkeypatch.setattr(osimage.shutil, "which", lambda name: f"/usr/bin/{name}")
    results, steps = {}, {"first": [], "second": []}

    def build(who):
        results[who] = osimage.build(tmp_path, "debian-12", lambda step, d, t: steps[who].append(step),
                                     mirror="http://mirror.example/debian")

    first = threading.Thread(target=build, args=("first",))
    second = threading.Thread(target=build, args=("second",))
    first.start()
    try:
        assert started.wait(30)
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting for the first build, not building beside it
    finally:  # a failure here still lets both builders end
        release.set()
        first.join(30)
        if second.ident is not None:
            second.join(30)
    assert len(calls) == 1 and "cached" in steps["second"] and "cached" not in steps["first"]
    assert "waiting for another build of this OS" in steps["second"]  # its progress says why it waits
    assert results["first"].path == results["second"].path and results["first"].path.is_file()
    assert [i.digest for i in osimage.built(tmp_path)] == [results["first"].digest]


def test_the_openstack_recipe_has_neutron_its_bus_database_and_puppet_modules_not_started_at_boot():
    recipe = osimage.recipe("debian-12-openstack")
    assert recipe.suite == "bookworm"
    assert {"neutron-server", "neutron-linuxbridge-agent", "neutron-dhcp-agent", "neutron-l3-agent",
            "rabbitmq-server", "mariadb-server", "puppet", "puppet-module-neutron"} <= set(recipe.packages)
    assert set(osimage.recipe("debian-12").packages) <= set(recipe.packages)  # the base image's, and more
    assert {"neutron-api", "neutron-rpc-server", "rabbitmq-server", "mariadb"} <= set(recipe.disabled_services)
    assert recipe.as_dict()["disabled_services"] == list(recipe.disabled_services)


def test_disabled_services_lose_their_boot_links_and_a_unit_the_image_lacks_is_refused(tmp_path):
    root = tmp_path / "root"
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for name in ("mariadb.service", "ssh.service", "epmd.socket"):
        (units / name).write_text("[Unit]\n")
    (root / "etc/init.d").mkdir(parents=True)
    (root / "etc/init.d/mariadb").write_text("#!/bin/sh\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    sockets = root / "etc/systemd/system/sockets.target.wants"
    wants.mkdir(parents=True)
    sockets.mkdir(parents=True)
    for link, unit in ((wants / "mariadb.service", "mariadb.service"), (wants / "ssh.service", "ssh.service"),
                       (sockets / "epmd.socket", "epmd.socket")):
        link.symlink_to(f"/lib/systemd/system/{unit}")
    (root / "etc/systemd/system/mysql.service").symlink_to("/lib/systemd/system/mariadb.service")  # an alias
    (root / "etc/rc2.d").mkdir()
    (root / "etc/rc2.d/S01mariadb").symlink_to("../init.d/mariadb")

    osimage._disable_services(root, ("mariadb", "epmd.socket"))
    assert sorted(p.name for p in wants.iterdir()) == ["ssh.service"]  # what was not named stays enabled
    assert list(sockets.iterdir()) == []
    # SysV as `update-rc.d disable` leaves it (`systemctl enable` needs runlevel links to flip back)
    assert [(p.name, os.readlink(p)) for p in (root / "etc/rc2.d").iterdir()] == [("K01mariadb", "../init.d/mariadb")]
    assert (units / "mariadb.service").is_file() and (root / "etc/systemd/system/mysql.service").is_symlink()
    with pytest.raises(osimage.OsImageError, match="disabled_services: the image has no unit 'rabbitmq-server.service'"):
        osimage._disable_services(root, ("rabbitmq-server",))
