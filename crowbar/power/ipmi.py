"""The ipmi power driver: IPMI 2.0 over LAN (RMCP+, "lanplus") with pyghmi, no ipmitool process.

Settings: `address` (host name or IP of the BMC), `port` (623), `username`, `password` (secret:
never shown back, never logged), `cipher_suite` (optional: 17, SHA-256, or 3, SHA-1; pyghmi offers
17 first and falls back to 3, and a node that requires 17 refuses a BMC that only speaks 3).

Verbs: on, off (hard), cycle (a hard reset; a node that is off is powered on), status, soft_off
(the OS is asked to shut down: an ACPI power button press), and a boot device for the next boot
only (pxe, disk; `http` is Redfish's). Every call opens its own session and closes it: a BMC
allows few sessions, and a node's calls are one at a time anyway (the power worker).

Errors become one PowerError line naming the node and the BMC: wrong credentials, no answer
(unreachable, or not an IPMI BMC; pyghmi gives up after a few seconds of retries), anything else
the BMC said. The power worker's `timeout` bounds the whole call besides.
"""

from __future__ import annotations

import ipaddress
import re
from contextlib import contextmanager

from crowbar.errors import InvalidInput
from crowbar.power.base import PowerDriver, PowerError, PowerNode, Setting, Status

CIPHER_SUITES = {17: 256, 3: 1}  # suite -> pyghmi's hash in use (SHA-256 or SHA-1)
BOOT_DEVICES = {"pxe": "network", "disk": "hd"}
# RFC 1123 host names; IP addresses are checked by ipaddress.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*$")
AUTH_ERRORS = ("password", "unauthorized", "username", "privilege", "rakp", "authentication")


def valid_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(text))


def scrub(text: str, *secrets: str) -> str:
    """`text` with every secret replaced (an error message must never carry a password)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


class IpmiPower(PowerDriver):
    name = "ipmi"
    summary = "a BMC over IPMI 2.0 LAN (RMCP+), with pyghmi"
    settings = {
        "address": Setting("host name or IP address of the BMC", required=True),
        "port": Setting("optional: UDP port of the BMC (623)", types=(int,)),
        "username": Setting("BMC user name", required=True),
        "password": Setting("BMC password (write-only: never shown back)", required=True, secret=True),
        "cipher_suite": Setting("optional: require this RMCP+ cipher suite, 17 (SHA-256) or 3 (SHA-1)",
                                types=(int,)),
    }
    timeout = 30.0

    def validate(self, settings) -> dict:
        settings = super().validate(settings)
        if not valid_host(settings["address"]):
            raise InvalidInput(f"power driver ipmi: setting 'address' must be a host name or an IP address, "
                               f"not {settings['address'][:64]!r}", field="settings.address")
        if not 1 <= settings.get("port", 623) <= 65535:
            raise InvalidInput("power driver ipmi: setting 'port' must be between 1 and 65535", field="settings.port")
        if not 1 <= len(settings["username"].encode()) <= 16:
            raise InvalidInput("power driver ipmi: setting 'username' must be 1 to 16 bytes (IPMI)",
                               field="settings.username")
        if not 1 <= len(settings["password"].encode()) <= 20:
            raise InvalidInput("power driver ipmi: setting 'password' must be 1 to 20 bytes (IPMI 2.0)",
                               field="settings.password")
        if "cipher_suite" in settings and settings["cipher_suite"] not in CIPHER_SUITES:
            raise InvalidInput("power driver ipmi: setting 'cipher_suite' must be 17 or 3",
                               field="settings.cipher_suite")
        return settings

    # -- verbs -----------------------------------------------------------------------------------
    def power_on(self, node: PowerNode) -> str:
        with self._session(node, "power on") as bmc:
            if bmc.get_power()["powerstate"] == "on":
                return f"{node.name} is already on"
            bmc.set_power("on")
        return f"{node.name} powered on (IPMI {self._where(node)})"

    def power_off(self, node: PowerNode) -> str:
        with self._session(node, "power off") as bmc:
            if bmc.get_power()["powerstate"] == "off":
                return f"{node.name} is already off"
            bmc.set_power("off")
        return f"{node.name} powered off (IPMI {self._where(node)})"

    def power_cycle(self, node: PowerNode) -> str:
        with self._session(node, "power cycle") as bmc:
            if bmc.get_power()["powerstate"] == "off":
                bmc.set_power("on")
                return f"{node.name} was off: powered on (IPMI {self._where(node)})"
            bmc.set_power("reset")
        return f"{node.name} reset (IPMI {self._where(node)})"

    def soft_off(self, node: PowerNode) -> str:
        with self._session(node, "soft power off") as bmc:
            if bmc.get_power()["powerstate"] == "off":
                return f"{node.name} is already off"
            bmc.set_power("shutdown")
        return f"{node.name}: the OS was asked to shut down (IPMI {self._where(node)})"

    def boot_device(self, node: PowerNode, device: str) -> str:
        if device not in BOOT_DEVICES:
            raise PowerError(f"{node.name}: IPMI boot devices are {', '.join(BOOT_DEVICES)}, not {device!r}")
        with self._session(node, f"boot device {device}") as bmc:
            bmc.set_bootdev(BOOT_DEVICES[device], persist=False)
        return f"{node.name} boots from {device} next time (IPMI {self._where(node)})"

    def status(self, node: PowerNode) -> Status:
        with self._session(node, "status") as bmc:
            state = bmc.get_power().get("powerstate")
        return state if state in ("on", "off") else "unknown"

    # -- sessions and errors ---------------------------------------------------------------------
    @staticmethod
    def _where(node: PowerNode) -> str:
        port = node.settings.get("port", 623)
        return f"{node.settings.get('address')}" + (f":{port}" if port != 623 else "")

    @contextmanager
    def _session(self, node: PowerNode, action: str):
        """A logged-in pyghmi Command, logged out afterwards; every error a PowerError line."""
        from pyghmi.exceptions import IpmiException, PyghmiException
        from pyghmi.ipmi import command

        address, username, password = node.setting("address"), node.setting("username"), node.setting("password")
        where = self._where(node)
        bmc = None
        try:
            bmc = command.Command(bmc=address, userid=username, password=password,
                                  port=int(node.settings.get("port", 623)), keepalive=False)
            wanted = node.settings.get("cipher_suite")
            if wanted is not None and getattr(bmc.ipmi_session, "attemptedhash", None) != CIPHER_SUITES[wanted]:
                raise PowerError(f"{node.name}: {action}: the BMC at {where} does not offer cipher suite {wanted}")
            yield bmc
        except PowerError:
            raise
        except IpmiException as exc:
            raise PowerError(self._explain(node, action, where, exc, password)) from None
        except (PyghmiException, OSError, KeyError, TypeError, ValueError) as exc:
            raise PowerError(f"{node.name}: {action}: BMC {where}: "
                             f"{scrub(str(exc) or type(exc).__name__, password)}") from None
        finally:
            if bmc is not None:
                try:
                    bmc.ipmi_session.logout()
                except Exception:  # the BMC may be gone: the session expires on its side
                    pass

    @staticmethod
    def _explain(node: PowerNode, action: str, where: str, exc, password: str) -> str:
        text = scrub(str(exc.args[0]) if exc.args and exc.args[0] else "", password)
        lowered = text.lower()
        if not text or "timeout" in lowered or "timed out" in lowered:
            return (f"{node.name}: {action}: no answer from the BMC at {where} "
                    "(unreachable, not an IPMI BMC, or it stopped answering)")
        if any(word in lowered for word in AUTH_ERRORS):
            return f"{node.name}: {action}: the BMC at {where} refused the credentials ({text})"
        return f"{node.name}: {action}: BMC {where}: {text}"
