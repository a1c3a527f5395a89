"""The redfish power driver: a BMC's Redfish service, with sushy (OpenStack's Redfish library).

Settings: `address` (the service's URL: https://bmc.example or https://10.0.0.5:8443), `username`,
`password` (secret: never shown back, never logged), `system` (the ComputerSystem's id; optional
when the service has one system), `verify` (TLS verification, on by default) and `ca_path` (a CA
bundle to verify the BMC's certificate with, for BMCs with certificates of a site's own CA).

Verbs: on (`On`), off (`ForceOff`), cycle (`ForceRestart`; a node that is off gets `On`), status
(`PowerState`), soft_off (`GracefulShutdown`), a one-time boot override (pxe `Pxe`, disk `Hdd`,
http `UefiHttp` where the system offers it), and BIOS attributes: `bios(node)` reads the current
ones, `set_bios(node, attributes)` writes them to the pending settings (applied at the next reset).

HTTP basic authentication on every request (no Redfish session is left behind on the BMC); no
retries of server-side errors (the power worker's request fails with the reason, and a person or
the annealer asks again); connect timeout 5 s, read timeout 15 s. Errors become one PowerError
line naming the node and the BMC: refused credentials, no answer, TLS verification, no such system.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

from crowbar.errors import InvalidInput
from crowbar.power.base import PowerDriver, PowerError, PowerNode, Setting, Status
from crowbar.power.ipmi import scrub, valid_host

CONNECT_TIMEOUT, READ_TIMEOUT = 5, 15
BOOT_TARGETS = {"pxe": "Pxe", "disk": "Hdd", "http": "UefiHttp"}  # Redfish BootSourceOverrideTarget
# BIOS settings: how long after the reset the attributes may take to read as wanted (a real
# server applies them in POST, minutes), and how often they are read meanwhile.
BIOS_TIMEOUT, BIOS_POLL = 600.0, 5.0


class RedfishPower(PowerDriver):
    name = "redfish"
    summary = "a BMC's Redfish service (HTTPS), with sushy"
    settings = {
        "address": Setting("URL of the Redfish service: https://host[:port]", required=True),
        "username": Setting("BMC user name", required=True),
        "password": Setting("BMC password (write-only: never shown back)", required=True, secret=True),
        "system": Setting("optional: the ComputerSystem id (needed when the service has several)"),
        "verify": Setting("optional: verify the BMC's TLS certificate (true)", types=(bool,)),
        "ca_path": Setting("optional: CA bundle (PEM file on the server) to verify the BMC's certificate with"),
    }
    timeout = 45.0
    timeouts = {"bios-apply": BIOS_TIMEOUT + 60.0}

    def validate(self, settings) -> dict:
        settings = super().validate(settings)
        url = urlsplit(settings["address"])
        try:
            port = url.port
        except ValueError:
            port = -1
        if url.scheme not in ("https", "http") or not url.hostname or not valid_host(url.hostname) or port == -1 \
                or url.query or url.fragment or url.username or url.password:
            raise InvalidInput("power driver redfish: setting 'address' must be a URL like https://host[:port]",
                               field="settings.address")
        if "system" in settings and (not settings["system"] or "/" in settings["system"].strip("/")):
            raise InvalidInput("power driver redfish: setting 'system' must be a system id (no '/')",
                               field="settings.system")
        if "ca_path" in settings and not os.path.isabs(settings["ca_path"]):
            raise InvalidInput("power driver redfish: setting 'ca_path' must be an absolute path", field="settings.ca_path")
        if "ca_path" in settings and settings.get("verify") is False:
            raise InvalidInput("power driver redfish: 'ca_path' with verify false would not be used",
                               field="settings.ca_path")
        return settings

    # -- verbs -----------------------------------------------------------------------------------
    def power_on(self, node: PowerNode) -> str:
        return self._reset(node, "power on", "ON", "already on", "ON", " powered on")

    def power_off(self, node: PowerNode) -> str:
        return self._reset(node, "power off", "OFF", "already off", "FORCE_OFF", " powered off")

    def power_cycle(self, node: PowerNode) -> str:
        return self._reset(node, "power cycle", "OFF", "was off: powered on", "FORCE_RESTART", " reset", when_so="ON")

    def soft_off(self, node: PowerNode) -> str:
        return self._reset(node, "soft power off", "OFF", "already off", "GRACEFUL_SHUTDOWN",
                           ": the OS was asked to shut down")

    def _reset(self, node: PowerNode, action: str, state: str, so: str, reset: str, done: str,
               when_so: str | None = None) -> str:
        """ComputerSystem.Reset `reset`, unless the system's PowerState is `state` already: then
        `so` (after a Reset `when_so`, if given); `done` follows the node's name. Names are sushy's
        PowerState and ResetType."""
        import sushy

        with self._system(node, action) as system:
            if system.power_state == getattr(sushy.PowerState, state):
                if when_so:
                    system.reset_system(getattr(sushy.ResetType, when_so))
                    return f"{node.name} {so} (Redfish {self._where(node)})"
                return f"{node.name} is {so}"
            system.reset_system(getattr(sushy.ResetType, reset))
        return f"{node.name}{done} (Redfish {self._where(node)})"

    def status(self, node: PowerNode) -> Status:
        import sushy

        with self._system(node, "status") as system:
            state = system.power_state
        return {sushy.PowerState.ON: "on", sushy.PowerState.OFF: "off"}.get(state, "unknown")

    def boot_device(self, node: PowerNode, device: str) -> str:
        import sushy

        if device not in BOOT_TARGETS:
            raise PowerError(f"{node.name}: Redfish boot devices are {', '.join(BOOT_TARGETS)}, not {device!r}")
        with self._system(node, f"boot device {device}") as system:
            allowed = {getattr(v, "value", v) for v in (system.boot.allowed_values or [])}
            target = BOOT_TARGETS[device]
            if allowed and target not in allowed:
                raise PowerError(f"{node.name}: the system does not offer boot target {target} "
                                 f"(it offers {', '.join(sorted(allowed))})")
            system.set_system_boot_options(sushy.BootSource(target), enabled=sushy.BootSourceOverrideEnabled.ONCE)
        return f"{node.name} boots from {device} next time (Redfish {self._where(node)})"

    # -- BIOS --------------------------------------------------------------------------------------
    def bios(self, node: PowerNode) -> dict:
        """The BIOS attributes in effect now."""
        with self._system(node, "read BIOS settings") as system:
            return dict(system.bios.attributes or {})

    def set_bios(self, node: PowerNode, attributes: dict) -> str:
        """Write `attributes` to the pending BIOS settings (the BMC applies them at the next reset)."""
        with self._system(node, "write BIOS settings") as system:
            system.bios.set_attributes(attributes)
        return f"{node.name}: BIOS settings {', '.join(sorted(attributes))} pending until the next reset"

    def apply_bios(self, node: PowerNode, wanted: dict) -> str:
        """Pending settings for what differs, a reset (ForceRestart, or On) to apply them, then the
        attributes read back until they are as wanted (a real BMC applies them during POST) or
        BIOS_TIMEOUT passes: then PowerError with each attribute that is not, and both values."""
        current = self.bios(node)
        missing = sorted(set(wanted) - set(current))
        if missing:
            raise PowerError(f"{node.name}: BIOS settings: the BIOS has no attribute "
                             + ", ".join(f"{name} (wanted {wanted[name]!r})" for name in missing))
        changes = {name: value for name, value in wanted.items() if current.get(name) != value}
        if not changes:
            return f"{node.name}: BIOS settings {_pairs(wanted)} already in effect (Redfish {self._where(node)})"
        self.set_bios(node, changes)
        self.power_cycle(node)
        deadline = time.monotonic() + BIOS_TIMEOUT
        while True:
            now = self.bios(node)
            wrong = sorted(name for name, value in wanted.items() if now.get(name) != value)
            if not wrong:
                return (f"{node.name}: BIOS settings {_pairs(changes)} applied at a reset and checked "
                        f"(Redfish {self._where(node)})")
            if time.monotonic() > deadline:
                raise PowerError(f"{node.name}: BIOS settings not in effect after the reset: " + ", ".join(
                    f"{name} is {now.get(name)!r}, wanted {wanted[name]!r}" for name in wrong))
            time.sleep(BIOS_POLL)

    # -- sessions and errors ---------------------------------------------------------------------
    @staticmethod
    def _where(node: PowerNode) -> str:
        system = node.settings.get("system")
        return f"{node.settings.get('address')}" + (f" system {system}" if system else "")

    @contextmanager
    def _system(self, node: PowerNode, action: str):
        import requests
        import sushy
        from sushy import exceptions as sx

        address, username, password = node.setting("address"), node.setting("username"), node.setting("password")
        verify = node.settings.get("ca_path") or node.settings.get("verify", True)
        where = self._where(node)
        try:
            root = sushy.Sushy(address, verify=verify,
                               auth=sushy.auth.BasicAuth(username=username, password=password),
                               server_side_retries=0, read_timeout=READ_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
            system_id = node.settings.get("system")
            if system_id:
                system = root.get_system(f"{root.get_system_collection().path.rstrip('/')}/{system_id}")
            else:
                members = root.get_system_collection().members_identities
                if len(members) != 1:
                    raise PowerError(f"{node.name}: {action}: the Redfish service at {address} has "
                                     f"{len(members)} systems: set 'system'")
                system = root.get_system(members[0])
            yield system
        except PowerError:
            raise
        except sx.AccessError:
            raise PowerError(f"{node.name}: {action}: the BMC at {where} refused the credentials") from None
        except sx.ResourceNotFoundError:
            raise PowerError(f"{node.name}: {action}: the Redfish service at {address} has no system "
                             f"{node.settings.get('system')!r}") from None
        except (sx.ConnectionError, requests.RequestException, OSError) as exc:
            raise PowerError(f"{node.name}: {action}: {self._unreachable(where, exc, password)}") from None
        except sx.SushyError as exc:
            raise PowerError(f"{node.name}: {action}: BMC {where}: {scrub(_first_line(exc), password)}") from None

    @staticmethod
    def _unreachable(where: str, exc: Exception, password: str) -> str:
        text = scrub(str(exc), password)
        if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "certificate" in text.lower():
            return f"the BMC at {where} failed TLS verification (set ca_path to the CA that signed its certificate)"
        if "timed out" in text.lower() or "timeout" in text.lower():
            return f"no answer from the BMC at {where} within {READ_TIMEOUT}s (it stopped answering)"
        return f"no answer from the BMC at {where} (unreachable: connection failed)"


def _pairs(attributes: dict) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in sorted(attributes.items()))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
