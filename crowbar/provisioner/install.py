"""Installing an OS image on a node: the root disk, its partitions, and the job the agent runs.

The discovery agent is the installer (like Ironic's agent and MAAS's ephemeral image): the server
hands it one job, a shell script made here, that

1. checks the chosen disk is the one the inventory named (size), and that the image will fit;
2. partitions it GPT: a BIOS boot partition (grub's core image on BIOS machines), an EFI system
   partition (grub's EFI binary on UEFI machines) and the root partition over the rest, so a disk
   installed on one firmware also boots on the other once its bootloader is installed;
3. streams the (compressed: zstd, or gzip for older images) image from the server into the root
   partition and checks its sha256 on the way (a FIFO feeds busybox's sha256sum while the
   decompressor and dd write; both decompressors check their own checksum too)
   before anything can boot it: a mismatch ends the job before the bootloader is written, so the
   disk cannot boot a corrupt system;
4. installs the bootloader for the node's firmware (from the inventory) with the image's own
   grub-install in a chroot, as curtin does;
5. writes the node's configuration: the NoCloud seed cloud-init reads at first boot (hostname,
   network, the admin server's SSH key) and the call-home settings (server URL and node token);

reporting each phase and the bytes written to the server as it goes. Its output ends up in the
node's problem reason when a step fails; `set -e` and the phase name say which step.

Everything here is a pure function of its arguments, unit-tested without a machine.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crowbar.errors import InvalidInput
from crowbar.provisioner.installers import InstallPlan, OsInstaller

GIB = 1 << 30
MIB = 1 << 20
MIN_ROOT_DISK = 4 * GIB

# GPT partition type GUIDs (sfdisk accepts them as they are).
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
EFI_SYSTEM = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

HINT_KEYS = ("name", "serial", "model", "size", "rotational")
# an image's compression -> the command that decompresses it on the node (zstd: the discovery
# image carries the host's zstd, crowbar.provisioner.image.DISCOVERY_TOOLS; gunzip: busybox)
DECOMPRESS = {"zstd": "zstd -dcq", "gzip": "gunzip -c"}
_SIZE = re.compile(r"^\s*(?P<op><=|>=|<|>|==|=)?\s*(?P<gib>\d+(\.\d+)?)\s*$")


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type: str
    start_mib: int
    size_mib: int | None  # None: the rest of the disk


# 1 MiB alignment; BIOS boot 1 MiB, ESP 255 MiB, root the rest: the same on every disk.
LAYOUT = (
    Partition(1, "bios", BIOS_BOOT, 1, 1),
    Partition(2, "esp", EFI_SYSTEM, 2, 255),
    Partition(3, "root", LINUX_FS, 257, None),
)
ROOT_PARTITION = 3
ESP_PARTITION = 2


def sfdisk_script(layout: Sequence[Partition] = LAYOUT) -> str:
    """The partition table as sfdisk's input."""
    lines = ["label: gpt"]
    for part in layout:
        size = f", size={part.size_mib}MiB" if part.size_mib else ""
        lines.append(f"start={part.start_mib}MiB{size}, type={part.type}, name={part.name}")
    return "\n".join(lines) + "\n"


def partition_device(disk: str, number: int) -> str:
    """/dev/vda + 3 -> /dev/vda3; /dev/nvme0n1 + 3 -> /dev/nvme0n1p3 (names ending in a digit)."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def root_space(disk_bytes: int, layout: Sequence[Partition] = LAYOUT) -> int:
    """Bytes the root partition gets on a disk of `disk_bytes` (the backup GPT takes the last MiB)."""
    start = max(p.start_mib for p in layout) * MIB
    return max(0, disk_bytes - start - MIB)


# --- the root disk ---

def check_hints(hints: Mapping) -> dict:
    if not isinstance(hints, Mapping):
        raise InvalidInput("root device hints must be an object", field="root_device")
    unknown = sorted(set(hints) - set(HINT_KEYS))
    if unknown:
        raise InvalidInput(f"unknown root device hint(s) {', '.join(unknown)}: expected {', '.join(HINT_KEYS)}",
                           field="root_device")
    if "size" in hints and not _SIZE.match(str(hints["size"])):
        raise InvalidInput(f"root device hint size {hints['size']!r}: expected GiB, optionally with "
                           "an operator (e.g. 40, '>= 100')", field="root_device")
    return dict(hints)


def _size_matches(rule, size_bytes: int) -> bool:
    match = _SIZE.match(str(rule))
    op, gib = match["op"] or "==", float(match["gib"])
    size = size_bytes / GIB
    return {"<=": size <= gib, ">=": size >= gib, "<": size < gib, ">": size > gib,
            "==": int(size) == int(gib), "=": int(size) == int(gib)}[op]


def _matches(disk: Mapping, hints: Mapping) -> bool:
    for key, want in hints.items():
        if key == "size":
            if not _size_matches(want, int(disk.get("size_bytes") or 0)):
                return False
        elif key == "name":
            if str(disk.get("name", "")).removeprefix("/dev/") != str(want).removeprefix("/dev/"):
                return False
        elif key == "rotational":
            if bool(disk.get("rotational")) != (str(want).lower() in ("1", "true", "yes")):
                return False
        elif str(disk.get(key, "")) != str(want):
            return False
    return True


def choose_root_disk(disks: Sequence[Mapping], hints: Mapping | None = None) -> dict:
    """The disk to install on: the one matching every hint (Ironic's root device hints: name,
    serial, model, size in GiB with an optional operator, rotational), or by default the smallest
    non-removable disk of at least 4 GiB. InvalidInput says why none fits."""
    hints = check_hints(hints or {})
    candidates = [dict(d) for d in disks if isinstance(d, Mapping) and d.get("name")]
    if hints:
        chosen = [d for d in candidates if _matches(d, hints)]
        if not chosen:
            seen = ", ".join(f"{d['name']} ({int(d.get('size_bytes') or 0) / GIB:.1f} GiB, serial "
                             f"{d.get('serial') or '-'})" for d in candidates) or "none"
            raise InvalidInput(f"no disk matches the root device hints {hints}: the node has {seen}",
                               field="root_device")
        return min(chosen, key=lambda d: (int(d.get("size_bytes") or 0), d["name"]))
    usable = [d for d in candidates
              if int(d.get("size_bytes") or 0) >= MIN_ROOT_DISK and not d.get("removable")]
    if not usable:
        seen = ", ".join(f"{d['name']} ({int(d.get('size_bytes') or 0) / GIB:.1f} GiB)" for d in candidates)
        raise InvalidInput(f"no disk of at least {MIN_ROOT_DISK // GIB} GiB to install on "
                           f"(the node has {seen or 'no disks'})", field="root_device")
    return min(usable, key=lambda d: (int(d.get("size_bytes") or 0), d["name"]))


# --- the job ---

def _heredoc(path: str, content: str, mode: str = "0644") -> str:
    marker = "CROWBAR_EOF"
    while marker in content:
        marker += "_"
    target = "$T" + shlex.quote(path)  # $T, the mounted target, expands; the rest is literal
    return (f"cat > {target} <<'{marker}'\n{content.rstrip(chr(10))}\n{marker}\n"
            f"chmod {mode} {target}")


def install_script(plan: InstallPlan) -> str:
    """The shell script (busybox sh) the agent runs to install; see the module docstring."""
    if plan.firmware not in ("bios", "uefi"):
        raise InvalidInput(f"firmware {plan.firmware!r}: expected bios or uefi", field="firmware")
    if plan.fs_size > root_space(plan.disk_bytes):
        raise InvalidInput(f"the image ({plan.fs_size / GIB:.2f} GiB) does not fit on {plan.disk} "
                           f"({plan.disk_bytes / GIB:.2f} GiB)", field="disk")
    if plan.compression not in DECOMPRESS:
        raise InvalidInput(f"image compression {plan.compression!r}: expected {' or '.join(DECOMPRESS)}",
                           field="os")
    decompress = DECOMPRESS[plan.compression]
    program = decompress.split()[0]
    q = shlex.quote
    root = partition_device(plan.disk, ROOT_PARTITION)
    esp = partition_device(plan.disk, ESP_PARTITION)
    seed = "\n".join(_heredoc(f"/var/lib/cloud/seed/nocloud/{name}", text)
                     for name, text in sorted(plan.seed.items()))
    if plan.firmware == "uefi":
        bootloader = "\n".join((
            "chroot $T mkfs.vfat -F 32 -n ESP " + q(esp) + " >/dev/null",
            "mkdir -p $T/boot/efi",
            "mount -t vfat " + q(esp) + " $T/boot/efi",
            "chroot $T grub-install --target=x86_64-efi --efi-directory=/boot/efi --boot-directory=/boot "
            "--removable --no-nvram --no-floppy",
            "ESP_UUID=$(chroot $T blkid -s UUID -o value " + q(esp) + ")",
            "echo \"UUID=$ESP_UUID /boot/efi vfat umask=0077,nofail 0 1\" >> $T/etc/fstab",
        ))
    else:
        bootloader = "chroot $T grub-install --target=i386-pc --boot-directory=/boot --no-floppy " + q(plan.disk)
    return f"""#!/bin/sh
# Crowbar OS install for {plan.node}: {plan.image_path} onto {plan.disk} ({plan.firmware}).
set -eu
set -o pipefail 2>/dev/null || true
DISK={q(plan.disk)}
ROOT={q(root)}
T=/mnt/target
NEXT=0  # uptime second before which nothing is reported: each report's answer says how long (`next`)
phase() {{
    PHASE=$1 BYTES=${{3:-0}}
    echo "crowbar-install: $1${{2:+ ($2)}}"
    report
}}
report() {{  # the phase now, unless the server asked for a pause: a phase that ends within it goes unsaid
    now=$(cut -d. -f1 /proc/uptime)
    [ "$now" -ge "$NEXT" ] || return 0
    answer=$(wget -q -O - --header "Authorization: Bearer $CROWBAR_TOKEN" \\
        --header "Content-Type: application/json" \\
        --post-data "{{\\"phase\\": \\"$PHASE\\", \\"bytes\\": $BYTES, \\"total\\": {plan.fs_size}}}" \\
        "$CROWBAR_URL"{q(plan.progress_path)} 2>/dev/null) || answer=
    pause=$(echo "$answer" | sed -n 's/.*"next": *\\([0-9][0-9]*\\).*/\\1/p')
    NEXT=$((now + ${{pause:-0}}))
}}
cleanup() {{
    [ -n "${{WRITER:-}}" ] && kill "$WRITER" 2>/dev/null
    for m in $T/boot/efi $T/dev/pts $T/dev $T/proc $T/sys $T/run $T; do umount "$m" 2>/dev/null || true; done
}}
trap 'code=$?; [ $code -ne 0 ] && echo "crowbar-install: failed in phase ${{PHASE:-start}} (exit $code)"; cleanup' EXIT

phase check-disk
[ -b "$DISK" ] || {{ echo "crowbar-install: $DISK is not a block device here"; exit 1; }}
size=$(( $(cat /sys/class/block/${{DISK##*/}}/size) * 512 ))
[ "$size" -eq {plan.disk_bytes} ] || {{ echo "crowbar-install: $DISK has $size bytes, the inventory said {plan.disk_bytes}"; exit 1; }}
command -v {program} >/dev/null || {{ echo "crowbar-install: this discovery image has no {program} for a {plan.compression} image (\\`crowbar images build-discovery\\` makes one that has)"; exit 1; }}

phase partition
for part in /sys/class/block/${{DISK##*/}}/${{DISK##*/}}*; do
    [ -e "$part" ] && umount "/dev/${{part##*/}}" 2>/dev/null || true
done
wipefs -q -a "$DISK"
sfdisk -q --wipe always "$DISK" <<'CROWBAR_LAYOUT'
{sfdisk_script().rstrip()}
CROWBAR_LAYOUT
mdev -s 2>/dev/null || true
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b "$ROOT" ] && break; sleep 1; done
[ -b "$ROOT" ] || {{ echo "crowbar-install: $ROOT did not appear after partitioning"; exit 1; }}

phase write-image "" 0
rm -f /tmp/image.fifo /tmp/image.sha256
mkfifo /tmp/image.fifo
sha256sum < /tmp/image.fifo > /tmp/image.sha256 &
SUMMER=$!
before=$(awk '{{print $7}}' /sys/class/block/${{DISK##*/}}/stat)
( wget -q -O - "$CROWBAR_URL"{q(plan.image_path)} | tee /tmp/image.fifo | {decompress} | dd of="$ROOT" bs=1M conv=fsync 2>/tmp/dd.err ) &
WRITER=$!
while kill -0 $WRITER 2>/dev/null; do
    sleep 3
    now=$(awk '{{print $7}}' /sys/class/block/${{DISK##*/}}/stat)
    phase write-image "" $(( (now - before) * 512 ))
done
if wait $WRITER; then wrote=0; else wrote=$?; fi
WRITER=
wait $SUMMER || true
# The checksum first: a damaged image also makes the decompressor fail (its own check), and the
# checksum says why.
phase verify-image "" {plan.fs_size}
got=$(cut -d' ' -f1 /tmp/image.sha256)
if [ "$got" != {q(plan.image_sha256)} ]; then
    echo "crowbar-install: image checksum mismatch: expected {plan.image_sha256}, got $got (of the bytes received)"
    echo "crowbar-install: the disk was not made bootable"
    wipefs -q -a "$ROOT" || true
    exit 1
fi
if [ "$wrote" -ne 0 ]; then
    echo "crowbar-install: writing the image failed (exit $wrote)"
    cat /tmp/dd.err
    exit 1
fi

phase bootloader
mkdir -p $T
mount -t ext4 "$ROOT" $T
mount --bind /dev $T/dev
mount -t proc proc $T/proc
mount -t sysfs sysfs $T/sys
{bootloader}

phase configure
mkdir -p $T/var/lib/cloud/seed/nocloud $T/etc/crowbar
{seed}
umask 077
printf 'URL=%s\\nTOKEN=%s\\n' "$CROWBAR_URL" "$CROWBAR_TOKEN" > $T/etc/crowbar/node.conf
umask 022
echo {q(plan.firmware)} > $T/etc/crowbar/firmware
# Boot on as soon as one link is configured: a planned NIC without carrier must not hold the boot.
mkdir -p $T/etc/systemd/system/systemd-networkd-wait-online.service.d
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=90\n' \
    > $T/etc/systemd/system/systemd-networkd-wait-online.service.d/crowbar.conf
sync
phase installed "" {plan.fs_size}
"""


class ImageInstaller(OsInstaller):
    """The built-in installer: an image streamed to the root partition by the agent (this module)."""

    name = "image"

    def job(self, plan: InstallPlan) -> str:
        return install_script(plan)
