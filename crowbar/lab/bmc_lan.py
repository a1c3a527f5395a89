"""ipmi_sim's `lan_config_program` for the lab's IPMI BMCs (crowbar/lab/bmc.py): makes the address
the BMC is given over IPMI answer IPMI, as a real BMC's NIC would.

    python -S -E bmc_lan.py --port P <device> get parm...        one `parm:value` line per parm
    python -S -E bmc_lan.py --port P <device> set|check parm value...

`set` of ip_addr puts the address on the loopback of the namespace ipmi_sim runs in (its child
runs there too) and redirects UDP 623 for it to this BMC's port P (nftables table
crowbar_lab_bmc); the values live in lan-state.json in ipmi_sim's directory (the BMC's). Standard
library only and started without site-packages (-S -E): ipmi_sim runs it once per parameter it
reads, about twenty for one `ipmitool lan print`, so its start-up time counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IPMI_PORT = 623
NFT_TABLE = "crowbar_lab_bmc"
DEFAULTS = {"ip_addr": "0.0.0.0", "ip_addr_src": "static", "mac_addr": "00:00:00:00:00:00",
            "subnet_mask": "0.0.0.0", "default_gw_ip_addr": "0.0.0.0",
            "default_gw_mac_addr": "00:00:00:00:00:00", "backup_gw_ip_addr": "0.0.0.0",
            "backup_gw_mac_addr": "00:00:00:00:00:00"}


class LanConfigError(Exception):
    """The address could not be applied; one line."""


def lan_config(port: int, op: str, params: list[str], state_file: Path) -> str:
    """`get parm...` answers `parm:value` lines; `set|check parm value...` checks and applies."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    if op == "get":
        return "".join(f"{p}:{state.get(p, DEFAULTS.get(p, ''))}\n" for p in params)
    pairs = dict(zip(params[::2], params[1::2]))
    if "ip_addr" in pairs:
        import ipaddress

        ipaddress.IPv4Address(pairs["ip_addr"])  # a bad address fails the set (ValueError)
    if op == "check":
        return ""
    old = state.get("ip_addr")
    state.update(pairs)
    new = state.get("ip_addr")
    if new != old:
        move_address(port, old, new)
    state_file.write_text(json.dumps(state))
    return ""


def move_address(port: int, old: str | None, new: str | None) -> None:
    import subprocess

    def run(*argv: str, check: bool = True) -> None:
        done = subprocess.run(list(argv), capture_output=True, text=True)
        if check and done.returncode != 0:
            raise LanConfigError(f"{' '.join(argv)}: {done.stderr.strip()}")

    run("nft", "add", "table", "ip", NFT_TABLE)
    run("nft", "add", "chain", "ip", NFT_TABLE, "output", "{ type nat hook output priority -100 ; }")
    if old and old != "0.0.0.0":
        run("ip", "addr", "del", f"{old}/32", "dev", "lo", check=False)
        listing = subprocess.run(["nft", "-a", "list", "chain", "ip", NFT_TABLE, "output"],
                                 capture_output=True, text=True).stdout
        for line in listing.splitlines():
            if f"ip daddr {old} " in line and "# handle" in line:
                run("nft", "delete", "rule", "ip", NFT_TABLE, "output", "handle", line.rsplit(" ", 1)[1])
    if new and new != "0.0.0.0":
        run("ip", "addr", "replace", f"{new}/32", "dev", "lo")
        run("nft", "add", "rule", "ip", NFT_TABLE, "output", "ip", "daddr", new, "udp", "dport", str(IPMI_PORT),
            "redirect", "to", f":{port}")


def main(argv: list[str]) -> int:
    """argv: --port P <device> get|set|check parm... (ipmi_sim appends the op and parms)."""
    if len(argv) < 4 or argv[0] != "--port" or not argv[1].isdigit() or argv[3] not in ("get", "set", "check"):
        sys.stderr.write("usage: bmc_lan.py --port P <device> get|set|check parm...\n")
        return 2
    try:
        sys.stdout.write(lan_config(int(argv[1]), argv[3], argv[4:], Path("lan-state.json")))
    except (LanConfigError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
