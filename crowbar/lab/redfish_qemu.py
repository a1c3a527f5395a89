"""sushy-tools' Redfish emulator with a systems driver for the lab's qemu VMs.

sushy-tools ships drivers for libvirt, OpenStack, Ironic and a fake one; the lab runs qemu
directly (no libvirt daemon), so this driver powers each VM through its QMP socket with the qemu
power driver (`crowbar.power.qemu`: `cont`, `quit`, `system_reset`, `system_powerdown`) and starts
it from its daemonized command line when it is off. The rest of the Redfish service (routes,
schemas, basic auth, TLS) is sushy-tools' own.

Per system, a JSON file in the state directory keeps what a BMC keeps: the one-time boot override
(applied when the VM is started: `-boot order=c` for Hdd, the lab's `order=n` for Pxe) and the BIOS
attributes, current and pending: a PATCH of BIOS/Settings is pending until the next reset or
power-on, as on real servers, and `GET BIOS` shows the current ones.

Run as `python -m crowbar.lab.redfish_qemu --config emulator.conf` (see crowbar.lab.bmc).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
from pathlib import Path

from sushy_tools import error
from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems.base import AbstractSystemsDriver

from crowbar.cli import local

QEMU_POWER, PowerNode, Qmp, POWER_ERRORS = local.qemu_power()

DEFAULT_BIOS = {"BootMode": "Bios", "EmbeddedSata": "Raid", "NicBoot1": "NetworkBoot", "ProcTurboMode": "Enabled",
                "SriovGlobalEnable": "Disabled"}
BOOT_DEVICES = ("Pxe", "Hdd", "UefiHttp")


class LabQemuDriver(AbstractSystemsDriver):
    """The lab's VMs as Redfish ComputerSystems."""

    @classmethod
    def initialize(cls, config, logger, *args, **kwargs):
        cls._config, cls._logger = config, logger
        return cls

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._systems = json.loads(Path(self._config["CROWBAR_LAB_SYSTEMS"]).read_text())
        self._state_dir = Path(self._config["SUSHY_EMULATOR_STATE_DIR"])
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._power = QEMU_POWER

    # -- identity --------------------------------------------------------------------------------
    def _get(self, identity: str) -> dict:
        for system in self._systems:
            if identity in (system["uuid"], system["name"]):
                return system
        raise error.NotFound(f"no lab VM {identity}")

    @property
    def driver(self):
        return "<crowbar lab qemu>"

    @property
    def systems(self):
        return [s["name"] for s in self._systems]

    def uuid(self, identity):
        return self._get(identity)["uuid"]

    def name(self, identity):
        return self._get(identity)["name"]

    # -- the BMC's own state ---------------------------------------------------------------------
    def _state_file(self, system: dict) -> Path:
        return self._state_dir / f"{system['name']}.json"

    def _state(self, system: dict) -> dict:
        try:
            return json.loads(self._state_file(system).read_text())
        except (OSError, ValueError):
            return {"bios": dict(DEFAULT_BIOS), "pending_bios": {}, "boot_once": None}

    def _save(self, system: dict, state: dict) -> None:
        path = self._state_file(system)
        path.with_suffix(".tmp").write_text(json.dumps(state))
        path.with_suffix(".tmp").replace(path)

    def _node(self, system: dict, boot: str | None = None) -> PowerNode:
        command = list(system["command"])
        if boot == "Hdd" and "-boot" in command:
            command[command.index("-boot") + 1] = "order=c"
        return PowerNode(name=system["name"], settings={"qmp": system["qmp"], "command": command})

    def _booting(self, system: dict) -> PowerNode:
        """Before a power-on or reset: pending BIOS settings take effect, the one-time boot
        override is used up."""
        state = self._state(system)
        state["bios"].update(state.pop("pending_bios", {}) or {})
        state["pending_bios"] = {}
        boot, state["boot_once"] = state.get("boot_once"), None
        self._save(system, state)
        return self._node(system, boot)

    # -- power -----------------------------------------------------------------------------------
    def get_power_state(self, identity):
        status = self._power.status(self._node(self._get(identity)))
        return {"on": "On", "off": "Off"}.get(status, "Off")

    def set_power_state(self, identity, state):
        system = self._get(identity)
        with self._lock:
            try:
                on = self._power.status(self._node(system)) == "on"
                if state in ("On", "ForceOn"):
                    if not on:
                        self._power.power_on(self._booting(system))
                elif state == "ForceOff":
                    self._power.power_off(self._node(system))
                elif state == "GracefulShutdown":
                    if on:
                        with Qmp(system["qmp"]) as qmp:
                            qmp.execute("system_powerdown")
                elif state in ("ForceRestart", "GracefulRestart", "PowerCycle"):
                    self._power.power_cycle(self._booting(system))
                elif state == "PushPowerButton":
                    self.set_power_state(identity, "GracefulShutdown" if on else "On")
                elif state == "Nmi":
                    with Qmp(system["qmp"]) as qmp:
                        qmp.execute("inject-nmi")
                else:
                    raise error.NotSupportedError(f"power state {state} is not supported")
            except (*POWER_ERRORS, OSError) as exc:
                raise error.FishyError(f"{system['name']}: {exc}") from None

    # -- boot ------------------------------------------------------------------------------------
    def get_boot_device(self, identity):
        return self._state(self._get(identity)).get("boot_once") or "Pxe"

    def set_boot_device(self, identity, boot_source):
        if boot_source not in BOOT_DEVICES:
            raise error.BadRequest(f"boot device {boot_source} is not supported (only {', '.join(BOOT_DEVICES)})")
        system = self._get(identity)
        with self._lock:
            state = self._state(system)
            state["boot_once"] = boot_source
            self._save(system, state)

    def get_boot_mode(self, identity):
        return "Legacy"  # SeaBIOS

    # -- BIOS ------------------------------------------------------------------------------------
    def get_bios(self, identity):
        return dict(self._state(self._get(identity))["bios"])

    def set_bios(self, identity, attributes):
        system = self._get(identity)
        with self._lock:
            state = self._state(system)
            unknown = sorted(set(attributes) - set(state["bios"]))
            if unknown:
                raise error.BadRequest(f"unknown BIOS attribute(s) {', '.join(unknown)}")
            state.setdefault("pending_bios", {}).update(attributes)
            self._save(system, state)

    def reset_bios(self, identity):
        system = self._get(identity)
        with self._lock:
            state = self._state(system)
            state["pending_bios"] = dict(DEFAULT_BIOS)
            self._save(system, state)

    def get_versions(self, identity):
        return {"BiosVersion": "SeaBIOS (qemu)"}

    def get_nics(self, identity):
        return [{"id": mac, "mac": mac} for mac in self._get(identity).get("macs", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crowbar.lab.redfish_qemu")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    app = emulator.app
    app.configure(config_file=args.config)
    driver = LabQemuDriver.initialize(app.config, app.logger)()
    # sushy-tools picks its systems driver in Application.systems; the lab's is ours.
    emulator.Application.systems = property(lambda self: driver)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(app.config["SUSHY_EMULATOR_SSL_CERT"], app.config["SUSHY_EMULATOR_SSL_KEY"])
    app.run(host=app.config["SUSHY_EMULATOR_LISTEN_IP"], port=app.config["SUSHY_EMULATOR_LISTEN_PORT"],
            ssl_context=context, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
