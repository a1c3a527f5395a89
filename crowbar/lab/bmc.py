"""Lab BMCs: real IPMI and Redfish protocol servers that really power the lab's qemu VMs.

- IPMI: OpenIPMI's `ipmi_sim` (Debian package openipmi), one per VM. It serves IPMI 2.0 over LAN
  (RMCP+) to the power driver and owns the VM process: its `startcmd` is the VM's qemu command
  line (in the foreground, without -daemonize: ipmi_sim's power state is whether that process
  runs). qemu connects back to ipmi_sim's "VM" serial codec through `ipmi-bmc-extern` with an
  `isa-ipmi-kcs` device, so the VM sees its BMC in-band (/dev/ipmi0, `ipmitool` in the discovery
  image) as a server does, and chassis off/reset/soft-off reach the VM through that channel.
  Every ipmi_sim listens on 127.0.0.1 on a port of its own; the address the BMC is configured to
  (`ipmitool lan set 1 ipaddr` in-band, by the bmc-config role) is made real by the
  `lan_config_program` hook, `crowbar/lab/bmc_lan.py`, which puts that address
  on the namespace's loopback and redirects UDP 623 for it to the BMC's port (nftables): the
  address the role chose from the `bmc` network answers IPMI, as a real BMC's NIC would.
- Redfish: sushy-tools' emulator (PyPI) with `crowbar.lab.redfish_qemu`, a systems driver for the
  lab VMs (power through their QMP sockets, one-time boot override, BIOS attributes with pending
  settings applied at the next reset), behind HTTP basic auth (sushy-tools' htpasswd file, bcrypt)
  and TLS with a certificate of the lab's own CA (so the driver's verify stays on).

Passwords are generated here (`new_password`), written only to files of mode 0600 in the BMC's
directory, and never printed. Processes are stopped by PID (`stop`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crowbar.lab import bmc_lan
from crowbar.procs import pid_alive, stop_pid

IPMI_PORT = 623
KINDS = ("ipmi", "redfish", "none")
# ipmi_sim's manufacturer and product ids (as `ipmitool mc info` shows them in-band). 0x1291 is the
# id OpenIPMI's own examples use; the product id is ours.
MFG_ID, PRODUCT_ID = 0x1291, 0xCB01
REDFISH_USER = "crowbar-lab"


class BmcError(Exception):
    """A lab BMC could not be started or configured; one line."""


def missing_tools(kind: str) -> list[str]:
    if kind == "ipmi":
        need = {"ipmi_sim": "openipmi", "nft": "nftables"}
        return [f"{tool} (Debian package {pkg})" for tool, pkg in need.items() if not shutil.which(tool)]
    if kind == "redfish":
        import importlib.util

        if importlib.util.find_spec("sushy_tools") is None:
            return ["sushy-tools (PyPI package sushy-tools)"]
    return []


def new_password(length: int = 16) -> str:
    """A generated password of letters and digits (IPMI 2.0 allows up to 20 bytes)."""
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _netns(namespace: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv] if namespace else argv


def _wait_port(host: str, port: int, pid: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise BmcError(f"{what} exited: {_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BmcError(f"{what} did not listen on {host}:{port} within {timeout:g}s: {_tail(log)}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"


# -- IPMI: ipmi_sim ----------------------------------------------------------------------------------
def ipmi_qemu_args(serial_port: int) -> list[str]:
    """What a VM's qemu command line needs to reach its ipmi_sim in-band (KCS at 0xca2, as on
    most servers)."""
    return ["-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={serial_port},reconnect=1",
            "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0", "-device", "isa-ipmi-kcs,bmc=bmc0"]


@dataclass
class IpmiSim:
    """One ipmi_sim for one VM, in `dir` (config, state, log). `vm_argv` is the VM's qemu command
    line without -daemonize (ipmi_sim runs it); `ipmi_qemu_args(serial_port)` is added to it."""

    name: str
    dir: str
    vm_argv: list[str]
    username: str = "admin"
    lan_port: int = 0
    serial_port: int = 0
    namespace: str | None = None
    pid: int | None = None
    lan_device: str = ""  # the device name ipmi_sim passes to `lan_config_program`
    startnow: bool = False  # start the VM (power on) when ipmi_sim starts

    def __post_init__(self):
        self.lan_port = self.lan_port or free_port(socket.SOCK_DGRAM)
        self.serial_port = self.serial_port or free_port(socket.SOCK_STREAM)
        self.lan_device = self.lan_device or f"bmc-{self.name}"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def password_file(self) -> Path:
        return self.path / "password"

    @property
    def password(self) -> str:
        return self.password_file.read_text()

    @property
    def log(self) -> Path:
        return self.path / "ipmi_sim.log"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IpmiSim:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def settings(self, address: str = "127.0.0.1") -> dict:
        """The ipmi power driver's settings for this BMC, as the lab set it up."""
        port = self.lan_port if address == "127.0.0.1" else IPMI_PORT
        return {"address": address, "port": port, "username": self.username, "password": self.password}

    def write_config(self, password: str | None = None) -> None:
        """lan.conf and the emulator command file. The factory user is `username` with a generated
        password (no default credentials), admin on the LAN channel, RMCP+ only."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "state").mkdir(exist_ok=True)
        password = password or (self.password if self.password_file.exists() else new_password())
        _write_secret(self.password_file, password)
        start = " ".join(_quote(a) for a in self.vm_argv + ipmi_qemu_args(self.serial_port))
        # The hook runs as ipmi_sim's child, so in ipmi_sim's namespace already.
        # ipmi_sim appends `get|set|check parm...`: the device name is part of the program string.
        lan_config = f"{sys.executable} -S -E {bmc_lan.__file__} --port {self.lan_port} {self.lan_device}"
        conf = f"""# ipmi_sim for lab VM {self.name} (written by crowbar.lab.bmc)
name "{self.name}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {self.lan_port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid {secrets.token_hex(16)}
    lan_config_program "{lan_config}"
  endlan
  serial 15 127.0.0.1 {self.serial_port} codec VM
  startcmd "{start}"
  startnow {"true" if self.startnow else "false"}
  poweroff_wait 5
  kill_wait 5
  user 2 true "{self.username}" "{password}" admin 10 md5
"""
        _write_secret(self.path / "lan.conf", conf)
        # mc_add: ipmb, device id, no device SDRs, device revision, firmware 1.0, IPMI 2.0 support
        # bits, manufacturer, product.
        (self.path / "bmc.emu").write_text(
            "mc_setbmc 0x20\n"
            f"mc_add 0x20 0 no-device-sdrs 0x23 1 0 0x9f {MFG_ID:#x} {PRODUCT_ID:#x} persist_sdr\n"
            "sel_enable 0x20 1000 0x0a\n"
            "mc_enable 0x20\n")

    def start(self, timeout: float = 60.0) -> None:
        """Start ipmi_sim (detached, in the namespace if any); returns when it answers RMCP.

        One probe process (in the namespace) pings until the BMC answers or `timeout` passes: a
        Python started per ping took seconds each on a loaded machine, and ten seconds of them
        made `lab up --bmc ipmi` fail while the BMC was merely slow to come up."""
        if not (self.path / "lan.conf").exists():
            self.write_config()
        argv = _netns(self.namespace, ["ipmi_sim", "-n", "-c", str(self.path / "lan.conf"),
                                       "-f", str(self.path / "bmc.emu"), "-s", str(self.path / "state")])
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.path)
        self.pid = proc.pid
        probe = subprocess.Popen(_netns(self.namespace, rmcp_wait_argv("127.0.0.1", self.lan_port, timeout)),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while probe.poll() is None:
                if proc.poll() is not None:
                    raise BmcError(f"ipmi_sim for {self.name} exited ({proc.returncode}): {_tail(self.log)}")
                time.sleep(0.1)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
        if probe.returncode != 0:
            if proc.poll() is not None:
                raise BmcError(f"ipmi_sim for {self.name} exited ({proc.returncode}): {_tail(self.log)}")
            raise BmcError(f"ipmi_sim for {self.name} did not answer within {timeout:g}s: {_tail(self.log)}")

    def vm_pid(self) -> int | None:
        """The VM's qemu, ipmi_sim's child (None when the machine is off)."""
        if not self.pid:
            return None
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        return next((int(c) for c in children if pid_alive(int(c))), None)

    def stop(self) -> list[int]:
        """Stop ipmi_sim and the VM it runs; returns the PIDs stopped."""
        stopped = []
        vm = self.vm_pid()
        # ipmi_sim first (it would start nothing new), then its VM.
        for pid, marker in ((self.pid, str(self.path)), (vm, "qemu")):
            if pid and stop_pid(pid, marker, timeout=5):
                stopped.append(pid)
        return stopped


RMCP_PING = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x00, 0x00, 0x00])
# The waiting loop as a standard-library script (`python -S -E`: no site-packages, so it starts in
# milliseconds even in a namespace on a loaded machine): argv host port seconds; exit 0 on an answer.
_RMCP_WAIT = """import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(bytes.fromhex(sys.argv[4]), (host, port))
            if s.recv(512):
                sys.exit(0)
        except OSError:
            time.sleep(0.1)
sys.exit(1)
"""


def rmcp_wait_argv(host: str, port: int, timeout: float) -> list[str]:
    """A command that pings host:port with RMCP presence pings until one is answered (exit 0) or
    `timeout` seconds pass (exit 1); run it in the BMC's namespace (`_netns`)."""
    return [sys.executable, "-S", "-E", "-c", _RMCP_WAIT, host, str(port), f"{timeout:g}", RMCP_PING.hex()]


def _quote(arg: str) -> str:
    """An argument for ipmi_sim's startcmd, which runs it through /bin/sh."""
    if arg and all(c.isalnum() or c in "-_./=:,@%+" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


# -- the lan_config_program hook: crowbar/lab/bmc_lan.py (standard library only, started with -S -E,
# since ipmi_sim runs it once per LAN parameter read: `lan print` reads about twenty) --------------


# -- Redfish: sushy-tools with the lab's qemu driver ----------------------------------------------------
@dataclass
class RedfishEmulator:
    """One sushy-tools emulator for the lab's VMs, in `dir`. `systems`: [{name, uuid, qmp,
    command}] (command: the VM's daemonized qemu argv, which a power-on after `off` runs)."""

    dir: str
    systems: list[dict] = field(default_factory=list)
    address: str = "127.0.0.1"
    port: int = 0
    namespace: str | None = None
    pid: int | None = None

    def __post_init__(self):
        self.port = self.port or free_port(socket.SOCK_STREAM)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def password(self) -> str:
        return (self.path / "password").read_text()

    @property
    def log(self) -> Path:
        return self.path / "emulator.log"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RedfishEmulator:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def settings(self, system: str) -> dict:
        """The redfish power driver's settings for one of the VMs."""
        return {"address": self.url, "username": REDFISH_USER, "password": self.password, "system": system,
                "ca_path": str(self.ca)}

    def write_config(self) -> None:
        import bcrypt

        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "password").exists():
            _write_secret(self.path / "password", new_password())
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        _write_secret(self.path / "htpasswd", f"{REDFISH_USER}:{hashed}\n")
        _make_tls(self.path, self.address)
        (self.path / "systems.json").write_text(json.dumps(self.systems, indent=2))
        (self.path / "emulator.conf").write_text(
            f"SUSHY_EMULATOR_LISTEN_IP = {self.address!r}\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            f"SUSHY_EMULATOR_SSL_CERT = {str(self.path / 'cert.pem')!r}\n"
            f"SUSHY_EMULATOR_SSL_KEY = {str(self.path / 'key.pem')!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(self.path / 'htpasswd')!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.path / 'state')!r}\n"
            f"CROWBAR_LAB_SYSTEMS = {str(self.path / 'systems.json')!r}\n")

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        argv = _netns(self.namespace, [sys.executable, "-m", "crowbar.lab.redfish_qemu",
                                       "--config", str(self.path / "emulator.conf")])
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.path, env=env)
        self.pid = proc.pid
        if self.namespace:
            deadline = time.monotonic() + timeout
            while "Running on" not in self.log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BmcError(f"the Redfish emulator did not start: {_tail(self.log)}")
                time.sleep(0.2)
        else:
            _wait_port(self.address, self.port, proc.pid, timeout, "the Redfish emulator", self.log)

    def reset(self, system: str, reset_type: str, timeout: float = 30.0) -> None:
        """POST ComputerSystem.Reset (the lab's first power-on goes through the BMC too)."""
        argv = _netns(self.namespace, [sys.executable, "-c", (
            "import sys, httpx; r = httpx.post(sys.argv[1], json={'ResetType': sys.argv[2]}, auth=(sys.argv[3], "
            "sys.stdin.read()), verify=sys.argv[4], timeout=%r); sys.exit(0 if r.status_code < 300 else "
            "print(r.status_code, r.text[:200]) or 1)" % timeout),
            f"{self.url}/redfish/v1/Systems/{system}/Actions/ComputerSystem.Reset", reset_type, REDFISH_USER,
            str(self.ca)])
        done = subprocess.run(argv, input=self.password, capture_output=True, text=True, timeout=timeout + 5)
        if done.returncode != 0:
            raise BmcError(f"Redfish reset {reset_type} of {system}: {(done.stdout + done.stderr).strip()[-300:]}")

    def stop(self) -> list[int]:
        return [self.pid] if self.pid and stop_pid(self.pid, "crowbar.lab.redfish_qemu", timeout=5) else []


# -- the lab's BMCs (crowbar lab up --bmc) ------------------------------------------------------------
REDFISH_PORT = 8443


def foreground(argv: list[str]) -> list[str]:
    """A lab VM's qemu argv for ipmi_sim's startcmd: not daemonized, not paused (ipmi_sim's power
    state is whether this process runs)."""
    return [a for a in argv if a not in ("-daemonize", "-S")]


class LabBmcs:
    """The BMCs of a lab's VMs: `kind` ipmi (one ipmi_sim per VM, which starts the VM: power on),
    redfish (one emulator for every VM; the VMs start as before, paused, and are powered on through
    Redfish) or none. `state` is what lab.json keeps of them."""

    def __init__(self, kind: str, state: dict | None = None):
        if kind not in KINDS:
            raise BmcError(f"--bmc {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind, self.state = kind, state if state is not None else {}

    def start(self, vms, namespace: str, address: str, lab_dir: Path, save) -> None:
        """Start the BMCs (and, for ipmi, the VMs through them); `save()` records each as it starts."""
        if self.kind == "ipmi":
            for vm in vms:
                sim = IpmiSim(name=vm.name, dir=str(Path(vm.dir) / "bmc"), vm_argv=foreground(vm.argv()),
                              namespace=namespace, startnow=True)
                self.state.setdefault("ipmi", {})[vm.name] = sim.to_dict()
                save()
                sim.start()
                self.state["ipmi"][vm.name] = sim.to_dict()
                save()
        elif self.kind == "redfish":
            systems = [{"name": vm.name, "uuid": _uuid(vm.macs[0]), "qmp": str(vm.qmp), "command": vm.command(),
                        "macs": vm.macs} for vm in vms]
            emulator = RedfishEmulator(dir=str(lab_dir / "redfish"), systems=systems, address=address,
                                       port=REDFISH_PORT, namespace=namespace)
            self.state["redfish"] = emulator.to_dict()
            save()
            emulator.start()
            self.state["redfish"] = emulator.to_dict()
            save()

    def ipmi_sim(self, vm: str) -> IpmiSim | None:
        data = self.state.get("ipmi", {}).get(vm)
        return IpmiSim.from_dict(data) if data else None

    def redfish(self) -> RedfishEmulator | None:
        data = self.state.get("redfish")
        return RedfishEmulator.from_dict(data) if data else None

    def power(self, vm: str) -> tuple[str, dict] | None:
        """(driver, settings) that power `vm` through its BMC; None without BMCs."""
        if self.kind == "ipmi" and (sim := self.ipmi_sim(vm)):
            return "ipmi", sim.settings()
        if self.kind == "redfish" and (emulator := self.redfish()):
            return "redfish", emulator.settings(vm)
        return None

    def vm_pid(self, vm: str) -> int | None:
        sim = self.ipmi_sim(vm)
        return sim.vm_pid() if sim else None

    def stop(self) -> list[str]:
        done = []
        for name in list(self.state.get("ipmi", {})):
            if pids := self.ipmi_sim(name).stop():
                done.append(f"stopped the IPMI BMC of {name} (ipmi_sim and its VM: pids {pids})")
        if (emulator := self.redfish()) and emulator.stop():
            done.append(f"stopped the Redfish BMC (pid {emulator.pid})")
        return done


def _uuid(mac: str) -> str:
    """A stable system UUID from the VM's first MAC."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"crowbar-lab-{mac}"))


def _make_tls(directory: Path, address: str) -> None:
    """A CA (ca.pem) and a server certificate for `address` signed by it (cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if (directory / "cert.pem").exists():
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crowbar lab BMC CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    _write_secret(directory / "key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()).decode())
