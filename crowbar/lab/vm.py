"""One lab VM: its MACs, taps, disk and the qemu command line that starts it.

A VM is started paused (`-S`), daemonized (`-daemonize -pidfile`), with its QMP monitor on a unix
socket: a machine plugged in but switched off, which the qemu power driver switches on with
`cont`. It runs under `crowbar.lab.vmrun` (`Vm.command()`), which makes every reset a cold start
of a new qemu (OVMF under TCG hung after warm resets; see vmrun). The same command is the node's
power `command` setting, so `crowbar nodes power NODE on` starts it again after `off` (qemu quit).
Only the first NIC (virtio, on the admin bridge) boots: qemu's iPXE ROM PXE-boots it; the other NICs (virtio too, on the data bridge) carry no boot ROM.
Every NIC has the same driver so that the kernel names them in PCI order at every boot: with an
e1000 beside the virtio NIC, the installed kernel sometimes probed the e1000 first and called it
eth0, and the node's network configuration (by MAC, eth0 for the admin NIC) did not come up.

Firmware: `bios` is qemu's pc machine with SeaBIOS; `uefi` is the q35 machine with OVMF (Debian's
`ovmf` package: the code read-only, a copy of the variable store per VM), whose network boot also
goes through the NIC's iPXE (its EFI driver). Both boot the NIC first and the disk second, so a
node whose boot script says `exit` (iPXE's "boot the next device") falls through to its disk.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_VMS = 15      # MACs end in <vm*16 + nic>, one byte
MAX_NICS = 16
ADMIN_BRIDGE = "br-admin"
DATA_BRIDGE = "br-data"
FIRMWARES = ("bios", "uefi")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def mac(lab_byte: int, vm: int, nic: int) -> str:
    """52:54:00:cb:<lab byte>:<vm*16+nic>: qemu's OUI, 'cb' for Crowbar, then lab, VM and NIC."""
    if not 1 <= vm <= MAX_VMS or not 0 <= nic < MAX_NICS or not 0 <= lab_byte <= 255:
        raise ValueError(f"no lab MAC for vm {vm}, nic {nic}, lab byte {lab_byte}")
    return f"52:54:00:cb:{lab_byte:02x}:{vm * 16 + nic:02x}"


@dataclass
class Nic:
    mac: str
    tap: str
    bridge: str
    model: str  # qemu device: virtio-net-pci


@dataclass
class Vm:
    name: str
    index: int
    memory_mb: int
    disk_gb: float
    cpus: int
    dir: str
    nics: list[Nic] = field(default_factory=list)
    accel: str = "tcg"
    firmware: str = "bios"
    pid: int | None = None
    node: str | None = None

    @classmethod
    def plan(cls, index: int, lab_byte: int, lab_dir: Path, memory_mb: int, disk_gb: float, nics: int,
             accel: str = "tcg", firmware: str = "bios") -> Vm:
        if firmware not in FIRMWARES:
            raise ValueError(f"firmware {firmware!r}: expected {' or '.join(FIRMWARES)}")
        vm = cls(name=f"vm{index}", index=index, memory_mb=memory_mb, disk_gb=disk_gb, cpus=1,
                 dir=str(Path(lab_dir) / "vms" / f"vm{index}"), accel=accel, firmware=firmware)
        for n in range(nics):
            vm.nics.append(Nic(mac=mac(lab_byte, index, n), tap=f"tap{index}-{n}",
                               bridge=ADMIN_BRIDGE if n == 0 else DATA_BRIDGE,
                               model="virtio-net-pci"))
        return vm

    @classmethod
    def from_dict(cls, data: dict) -> Vm:
        data = dict(data)
        data["nics"] = [Nic(**n) for n in data.get("nics", [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self) | {"qmp": str(self.qmp), "console": str(self.console), "disk": str(self.disk),
                               "pidfile": str(self.pidfile)}

    @property
    def macs(self) -> list[str]:
        return [n.mac for n in self.nics]

    @property
    def qmp(self) -> Path:
        return Path(self.dir) / "qmp.sock"

    @property
    def console(self) -> Path:
        return Path(self.dir) / "console.log"

    @property
    def disk(self) -> Path:
        return Path(self.dir) / "disk.raw"

    @property
    def pidfile(self) -> Path:
        return Path(self.dir) / "qemu.pid"

    @property
    def disk_bytes(self) -> int:
        return int(self.disk_gb * (1 << 30))

    @property
    def efivars(self) -> Path:
        return Path(self.dir) / "OVMF_VARS.fd"

    @property
    def sercon(self) -> Path:
        return Path(self.dir) / "sercon-port"

    def prepare(self) -> None:
        """The VM's directory: a sparse raw disk (no space until the VM writes), the console log,
        and SeaBIOS's serial console setting (COM1, 0x3f8)."""
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        with open(self.disk, "wb") as f:
            f.truncate(self.disk_bytes)
        self.sercon.write_bytes((0x3F8).to_bytes(2, "little"))
        if self.firmware == "uefi":
            shutil.copyfile(OVMF_VARS, self.efivars)
        self.console.touch()

    def command(self, qemu: str = "qemu-system-x86_64") -> list[str]:
        """What starts the VM: its qemu argv under crowbar.lab.vmrun, which makes every reset (the
        OS's reboot, a power driver's cycle) a cold start of a new qemu (see there why)."""
        return [sys.executable, "-m", "crowbar.lab.vmrun", "--", *self.argv(qemu)]

    def argv(self, qemu: str = "qemu-system-x86_64") -> list[str]:
        """qemu's command line: paused, daemonized, serial to console.log (appended across starts)."""
        machine = "q35" if self.firmware == "uefi" else "pc"
        args = [qemu, "-name", self.name, "-machine", machine, "-accel", self.accel,
                "-m", str(self.memory_mb), "-smp", str(self.cpus),
                "-display", "none", "-vga", "none", "-monitor", "none",
                "-chardev", f"file,id=serial0,path={self.console},append=on", "-serial", "chardev:serial0",
                # SeaBIOS copies its screen (and so iPXE's) to the serial port: the PXE steps show
                # in the console log too. The port is a little-endian integer file (see prepare).
                "-fw_cfg", f"name=etc/sercon-port,file={self.sercon}",
                "-qmp", f"unix:{self.qmp},server=on,wait=off",
                "-pidfile", str(self.pidfile), "-daemonize", "-S",
                "-drive", f"file={self.disk},format=raw,if=none,id=disk0,cache=unsafe",
                "-device", "virtio-blk-pci,drive=disk0,bootindex=2"]
        if self.firmware == "uefi":
            args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={self.efivars}",
                     # IPv4 PXE only (a BIOS setup setting on a real server): after iPXE's `exit` for a
                     # local boot, OVMF would otherwise try PXE over IPv6 for a minute before the disk.
                     "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
        for i, nic in enumerate(self.nics):
            args += ["-netdev", f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no"]
            device = f"{nic.model},netdev=net{i},mac={nic.mac}"
            # Only the admin NIC carries iPXE: the firmware PXE-boots from it alone.
            device += ",bootindex=1" if i == 0 else ",romfile="
            args += ["-device", device]
        return args
