"""The discovery image: a Debian kernel plus an initramfs with busybox, drivers and the agent.

Built only from what this machine has installed (linux-image-amd64 for /boot/vmlinuz-<ver> and
/lib/modules/<ver>, busybox-static for /bin/busybox), so building needs no network and no root
tools: the initramfs is a newc cpio written here. A few host programs the agent's jobs need
(DISCOVERY_TOOLS: sfdisk, wipefs, ipmitool) are copied in with the shared libraries ldd names.
The drivers come with their dependencies from modules.dep and are loaded by /init with insmod in
dependency order; compressed modules are decompressed at build time because busybox insmod cannot read xz or zstd. Firmware files are not
shipped: NICs that need them (bnx2, some Broadcom and QLogic parts) are left to a later image.

Images are cached by content: the directory name is the sha256 of every input (kernel, modules,
busybox, agent, this builder), so a second build with the same inputs returns the cached files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from crowbar.agent import initramfs_files
from crowbar.errors import CrowbarError

BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")
BUSYBOX = Path("/bin/busybox")

# Drivers for qemu's default hardware and common servers, and the kernel features discovery
# jobs configure. Built-in ones (Debian builds af_packet in) are skipped.
DISCOVERY_MODULES = (
    # qemu: NICs, disks and their controllers
    "virtio_pci", "virtio_net", "e1000", "e1000e",
    "virtio_blk", "virtio_scsi", "ahci", "ata_piix", "sd_mod", "nvme",
    # server NICs
    "igb", "ixgbe", "i40e", "tg3", "bnxt_en", "r8169", "vmxnet3",
    # server storage controllers
    "megaraid_sas", "mpt3sas", "hpsa", "smartpqi",
    # network features: raw sockets for udhcpc, VLANs, bonds, bridges
    "af_packet", "8021q", "bonding", "bridge",
    # installing an OS: the root filesystem, the EFI system partition (vfat with its code pages)
    "ext4", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "crc32c_generic",
    # the BMC in-band (KCS, SMIC or BT found through ACPI/SMBIOS; /dev/ipmi0 for ipmitool)
    "ipmi_si", "ipmi_devintf",
)

# Host programs the agent's jobs need beyond busybox, each copied with the shared libraries `ldd`
# names (and the dynamic loader), at the same paths: name -> (path on this host, Debian package).
# sfdisk writes GPT partition tables (busybox fdisk cannot); wipefs erases filesystem signatures;
# ipmitool reads the BMC for the inventory and configures it (the bmc-config role); zstd
# decompresses OS images (busybox has no zstd; its gunzip takes four times the CPU).
DISCOVERY_TOOLS: dict[str, tuple[str, str]] = {
    "sfdisk": ("/sbin/sfdisk", "fdisk"),
    "wipefs": ("/sbin/wipefs", "util-linux"),
    "ipmitool": ("/usr/bin/ipmitool", "ipmitool"),
    "zstd": ("/usr/bin/zstd", "zstd"),
}
# ipmitool names a BMC's manufacturer from IANA's enterprise numbers (4.7 MB on the host): the
# image has the entries of the usual server and BMC makers only; others read "Unknown (0x...)".
IANA_REGISTRY = Path("/usr/share/misc/enterprise-numbers.txt")
BMC_VENDORS = (2, 9, 11, 42, 343, 674, 2011, 4753, 7244, 10368, 10876, 19046, 20974, 47196)

Progress = Callable[[str, int, int], None]


class ImageError(CrowbarError):
    """The image cannot be built from what is installed here."""

    status = 500
    kind = "image_build_failed"


@dataclass(frozen=True)
class DiscoveryImage:
    kernel: Path
    initrd: Path
    digest: str


# --- cpio (newc), the format the kernel unpacks an initramfs from ---

@dataclass(frozen=True)
class CpioEntry:
    name: str  # relative, e.g. "bin/busybox"
    mode: int  # file type and permission bits, as in st_mode
    data: bytes = b""  # a file's content or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node

    @classmethod
    def directory(cls, name: str) -> CpioEntry:
        return cls(name, stat.S_IFDIR | 0o755)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int) -> CpioEntry:
        return cls(name, stat.S_IFCHR | 0o600, rdev=(major, minor))


def write_cpio(entries: Iterable[CpioEntry], out: BinaryIO) -> None:
    """Writes a newc archive: owned by root, mtime 0, so equal inputs give equal bytes."""
    def member(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        out.write(header + encoded + _pad(len(header) + len(encoded)))
        out.write(data + _pad(len(data)))

    for ino, entry in enumerate(entries, start=1):
        member(ino, entry.name, entry.mode, entry.data, entry.rdev)
    member(0, "TRAILER!!!", 0, b"", (0, 0))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


# --- kernel modules ---

def module_name(path: str) -> str:
    """The name modprobe knows a module file by: kernel/net/802/garp.ko.xz -> garp, - as _."""
    return PurePosixPath(path).name.split(".ko")[0].replace("-", "_")


def resolve_modules(wanted: Iterable[str], modules_dep: str, modules_builtin: str = "") -> list[str]:
    """The module files (as modules.dep names them) for `wanted` and their dependencies, each
    after everything it needs, so that insmod can load them in this order."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, colon, needs = line.partition(":")
        if colon:
            deps[path] = needs.split()
            by_name[module_name(path)] = path
    builtin = {module_name(path) for path in modules_builtin.split()}

    order: list[str] = []
    state: dict[str, str] = {}

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if state.get(path) == "done":
            return
        if state.get(path) == "visiting":
            raise ImageError(f"modules.dep has a dependency cycle: {' -> '.join(chain + (path,))}")
        state[path] = "visiting"
        for dep in deps.get(path, ()):
            visit(dep, chain + (path,))
        state[path] = "done"
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise ImageError(f"kernel module {name} is neither in modules.dep nor built into the kernel")
        visit(by_name[key], ())
    return order


def _module_bytes(path: Path) -> bytes:
    """A module's ELF bytes; busybox insmod loads only uncompressed modules."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise ImageError(f"{path} is zstd-compressed: install the zstd package")
        return subprocess.run(["zstd", "-dcq", str(path)], check=True, capture_output=True).stdout
    return data


# --- inputs ---

def _version_key(version: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


def default_kernel_version() -> str:
    """The newest kernel in /boot that has its modules installed."""
    versions = [path.name.removeprefix("vmlinuz-") for path in BOOT_DIR.glob("vmlinuz-*")]
    usable = [v for v in versions if (MODULES_DIR / v / "modules.dep").is_file()]
    if not usable:
        raise ImageError("no kernel with modules in /boot and /lib/modules: install linux-image-amd64")
    return max(usable, key=_version_key)


def _is_static(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has no program interpreter (PT_INTERP)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ImageError(f"{BUSYBOX} is not a 64-bit ELF executable")
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def tool_files(tools: dict[str, tuple[str, str]] = DISCOVERY_TOOLS) -> dict[str, Path]:
    """Every file the host programs in `tools` need, as initramfs path -> host file: the programs
    themselves (under usr/sbin, as busybox leaves it free) and the libraries and loader `ldd` names,
    at the paths the loader looks for them. ImageError names the package of a missing program."""
    files: dict[str, Path] = {}
    for name, (path, package) in sorted(tools.items()):
        program = Path(path)
        if not program.is_file():
            raise ImageError(f"{path} is missing: install the {package} package")
        files[f"usr/sbin/{name}"] = program
        out = subprocess.run(["ldd", str(program)], capture_output=True, text=True)
        if out.returncode != 0:
            raise ImageError(f"ldd {path} failed: {(out.stderr or out.stdout).strip()}")
        for line in out.stdout.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                files[match.group(1).lstrip("/")] = Path(match.group(1))
    return files


def vendor_registry(source: Path = IANA_REGISTRY, numbers=BMC_VENDORS) -> bytes:
    """IANA's enterprise-numbers file cut to `numbers` (ipmitool reads number lines, each followed
    by the organization's name indented by two spaces); empty when the host has none."""
    try:
        lines = source.read_text(errors="replace").splitlines()
    except OSError:
        return b""
    wanted = {str(n) for n in numbers}
    out = []
    for i, line in enumerate(lines):
        if line in wanted:
            out.append(line)
            out.extend(lines[i + 1:i + 4])
    return ("\n".join(out) + "\n").encode() if out else b""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the build ---

def build_discovery_image(cache_dir: Path, kernel_version: str | None = None,
                          progress: Progress | None = None) -> DiscoveryImage:
    """The discovery image for `kernel_version` (default: the newest installed), from the cache
    when one with the same inputs was built before. `progress(step, done, total)` hears of the
    steps "hashing inputs", then "cached", or "adding modules" and "compressing"."""
    report = progress or (lambda step, done, total: None)
    version = kernel_version or default_kernel_version()
    if "/" in version:
        raise ImageError(f"{version!r} is not a kernel version")
    vmlinuz = BOOT_DIR / f"vmlinuz-{version}"
    module_root = MODULES_DIR / version
    if not vmlinuz.is_file() or not (module_root / "modules.dep").is_file():
        raise ImageError(f"kernel {version} is not installed: need {vmlinuz} and {module_root}/modules.dep")
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: install busybox-static")
    busybox = BUSYBOX.read_bytes()
    if not _is_static(busybox):
        raise ImageError(f"{BUSYBOX} is dynamically linked: install busybox-static")

    builtin = module_root / "modules.builtin"
    modules = resolve_modules(DISCOVERY_MODULES, (module_root / "modules.dep").read_text(),
                              builtin.read_text() if builtin.is_file() else "")
    agent = initramfs_files()
    tools = tool_files()
    data = {"usr/share/misc/enterprise-numbers.txt": vendor_registry()}

    module_hashes = {}
    for done, rel in enumerate(modules, start=1):
        module_hashes[rel] = _sha256((module_root / rel).read_bytes())
        report("hashing inputs", done, len(modules))
    manifest = {
        "kernel_version": version,
        "kernel": _sha256(vmlinuz.read_bytes()),
        "modules": module_hashes,
        "busybox": _sha256(busybox),
        "tools": {path: _sha256(host.read_bytes()) for path, host in sorted(tools.items())},
        "agent": {path: _sha256(content) for path, content in sorted(agent.items())},
        "data": {path: _sha256(content) for path, content in sorted(data.items())},
        "builder": _sha256(Path(__file__).read_bytes()),
    }
    digest = _sha256(json.dumps(manifest, sort_keys=True).encode())
    image = DiscoveryImage(cache_dir / digest / "vmlinuz", cache_dir / digest / "initrd.img", digest)
    if (cache_dir / digest / "manifest.json").is_file():
        report("cached", 1, 1)
        return image

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    work.chmod(0o755)  # mkdtemp makes it private; the image is served over HTTP
    try:
        entries = _initramfs_entries(version, module_root, modules, busybox, agent, tools, data, report)
        report("compressing", 0, 1)
        with open(work / "initrd.img", "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
                write_cpio(entries, out)
        report("compressing", 1, 1)
        shutil.copyfile(vmlinuz, work / "vmlinuz")
        (work / "manifest.json").write_text(json.dumps({"digest": digest, **manifest}, indent=2) + "\n")
        try:
            work.rename(cache_dir / digest)
        except OSError:  # built meanwhile by someone else: theirs is as good as ours
            if not (cache_dir / digest / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image


def _initramfs_entries(version: str, module_root: Path, modules: Sequence[str], busybox: bytes,
                       agent: dict[str, bytes], tools: dict[str, Path], data: dict[str, bytes],
                       report: Progress) -> list[CpioEntry]:
    """Everything in the initramfs, parents before children as the kernel's unpacker needs."""
    entries = {name: CpioEntry.directory(name) for name in ("dev", "proc", "sys", "run", "tmp", "mnt")}
    # The kernel opens /dev/console for /init before anything could mount devtmpfs.
    entries["dev/console"] = CpioEntry.char_device("dev/console", 5, 1)
    entries["bin/busybox"] = CpioEntry.file("bin/busybox", busybox, 0o755)
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True)
    for applet in applets.stdout.split():
        entries.setdefault(applet, CpioEntry.symlink(applet, "/bin/busybox"))

    order = []
    for done, rel in enumerate(modules, start=1):
        target = f"lib/modules/{version}/{rel.split('.ko')[0]}.ko"
        entries[target] = CpioEntry.file(target, _module_bytes(module_root / rel))
        order.append(f"/{target}\n")
        report("adding modules", done, len(modules))
    entries["etc/crowbar/modules"] = CpioEntry.file("etc/crowbar/modules", "".join(order).encode())
    for path, script in agent.items():
        entries[path] = CpioEntry.file(path, script, 0o755)
    for path, host in tools.items():
        entries[path] = CpioEntry.file(path, host.read_bytes(), 0o755)
    for path, content in data.items():
        entries[path] = CpioEntry.file(path, content)

    for name in list(entries):
        parent = os.path.dirname(name)
        while parent and parent not in entries:
            entries[parent] = CpioEntry.directory(parent)
            parent = os.path.dirname(parent)
    return [entries[name] for name in sorted(entries)]
