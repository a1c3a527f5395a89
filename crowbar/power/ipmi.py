"""The ipmi power driver: IPMI 2.0 over LAN (RMCP+, "lanplus") with pyghmi, no ipmitool process.

Settings: `address` (host name or IP of the BMC), `port` (623), `username`, `password` (secret:
never shown back, never logged), `cipher_suite` (optional: 17, SHA-256, or 3, SHA-1; pyghmi offers
17 first and falls back to 3, and a node that requires 17 refuses a BMC that only speaks 3).

Verbs: on, off (hard), cycle (a hard reset; a node that is off is powered on), status, soft_off
(the OS is asked to shut down: an ACPI power button press), and a boot device for the next boot
only (pxe, disk; `http` is Redfish's).

Errors become one PowerError line naming the node and the BMC: wrong credentials, no answer
(unreachable, or not an IPMI BMC; pyghmi gives up after a few seconds of retries), anything else
the BMC said. The power worker's `timeout` bounds the whole call besides.

Each call runs in a short-lived child process (`python -m crowbar.power.ipmi`, the settings on its
stdin, never on its command line) that logs in, acts, logs out and exits: pyghmi keeps sessions
in process-wide caches that it hands to the next caller even when they are logged out or still
logging in (pyghmi 1.6 then hangs or fails with "'<' not supported between float and NoneType"),
and a child can be killed when a BMC stops answering, so a call never outlives its timeout the way
an abandoned thread would. The price is a Python start per call (see docs/benchmarks.md).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys

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

    # -- verbs (each in a child process: `_call`) ----------------------------------------------------
    def power_on(self, node: PowerNode) -> str:
        return self._call(node, "power on", "on")

    def power_off(self, node: PowerNode) -> str:
        return self._call(node, "power off", "off")

    def power_cycle(self, node: PowerNode) -> str:
        return self._call(node, "power cycle", "cycle")

    def soft_off(self, node: PowerNode) -> str:
        return self._call(node, "soft power off", "soft-off")

    def boot_device(self, node: PowerNode, device: str) -> str:
        if device not in BOOT_DEVICES:
            raise PowerError(f"{node.name}: IPMI boot devices are {', '.join(BOOT_DEVICES)}, not {device!r}")
        return self._call(node, f"boot device {device}", "boot", device)

    def status(self, node: PowerNode) -> Status:
        state = self._call(node, "status", "status")
        return state if state in ("on", "off") else "unknown"

    def _call(self, node: PowerNode, action: str, verb: str, *args: str) -> str:
        for key in ("address", "username", "password"):
            node.setting(key)
        request = json.dumps({"node": node.name, "settings": node.settings, "action": action, "verb": verb,
                              "args": list(args)})
        try:
            done = subprocess.run([sys.executable, "-m", "crowbar.power.ipmi"], input=request, capture_output=True,
                                  text=True, timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PowerError(f"{node.name}: {action}: no answer from the BMC at {_where(node.settings)} within "
                             f"{CALL_TIMEOUT:g}s (it stopped answering)") from None
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            raise PowerError(f"{node.name}: {action}: the IPMI call failed (exit {done.returncode}): "
                             f"{scrub(_last_line(done.stderr), node.settings.get('password', ''))}") from None
        if not answer.get("ok"):
            raise PowerError(answer.get("error") or f"{node.name}: {action}: failed")
        return answer["result"]


CALL_TIMEOUT = IpmiPower.timeout - 5  # the child is killed before the power worker gives up


def _where(settings: dict) -> str:
    port = settings.get("port", 623)
    return f"{settings.get('address')}" + (f":{port}" if port != 623 else "")


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1][:300]


# -- the child process -------------------------------------------------------------------------------
def _act(bmc, name: str, where: str, verb: str, args: list[str]) -> str:
    power = bmc.get_power()["powerstate"]
    if verb == "status":
        return power
    if verb == "boot":
        bmc.set_bootdev(BOOT_DEVICES[args[0]], persist=False)
        return f"{name} boots from {args[0]} next time (IPMI {where})"
    if verb == "on":
        if power == "on":
            return f"{name} is already on"
        bmc.set_power("on")
        return f"{name} powered on (IPMI {where})"
    if power == "off":
        if verb == "cycle":
            bmc.set_power("on")
            return f"{name} was off: powered on (IPMI {where})"
        return f"{name} is already off"
    if verb == "off":
        bmc.set_power("off")
        return f"{name} powered off (IPMI {where})"
    if verb == "cycle":
        bmc.set_power("reset")
        return f"{name} reset (IPMI {where})"
    if verb == "soft-off":
        bmc.set_power("shutdown")
        return f"{name}: the OS was asked to shut down (IPMI {where})"
    raise ValueError(f"unknown verb {verb!r}")


def _explain(name: str, action: str, where: str, exc, password: str) -> str:
    text = scrub(str(exc.args[0]) if exc.args and exc.args[0] else "", password)
    lowered = text.lower()
    if not text or "timeout" in lowered or "timed out" in lowered:
        return (f"{name}: {action}: no answer from the BMC at {where} "
                "(unreachable, not an IPMI BMC, or it stopped answering)")
    if any(word in lowered for word in AUTH_ERRORS):
        return f"{name}: {action}: the BMC at {where} refused the credentials ({text})"
    return f"{name}: {action}: BMC {where}: {text}"


def call(request: dict) -> dict:
    """One IPMI action: {"ok": true, "result": line} or {"ok": false, "error": line}."""
    from pyghmi.exceptions import IpmiException, PyghmiException
    from pyghmi.ipmi import command

    name, action, settings = request["node"], request["action"], request["settings"]
    password, where = settings["password"], _where(settings)
    bmc = None
    try:
        bmc = command.Command(bmc=settings["address"], userid=settings["username"], password=password,
                              port=int(settings.get("port", 623)), keepalive=False)
        wanted = settings.get("cipher_suite")
        if wanted is not None and getattr(bmc.ipmi_session, "attemptedhash", None) != CIPHER_SUITES[wanted]:
            return {"ok": False, "error": f"{name}: {action}: the BMC at {where} does not offer cipher suite {wanted}"}
        return {"ok": True, "result": _act(bmc, name, where, request["verb"], request["args"])}
    except IpmiException as exc:
        return {"ok": False, "error": _explain(name, action, where, exc, password)}
    except (PyghmiException, OSError, KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"{name}: {action}: BMC {where}: {scrub(str(exc) or type(exc).__name__, password)}"}
    finally:
        if bmc is not None:
            try:
                bmc.ipmi_session.logout()
            except Exception:  # the BMC is gone: its session times out on its side
                pass


def main() -> int:
    sys.stdout.write(json.dumps(call(json.loads(sys.stdin.read()))) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
