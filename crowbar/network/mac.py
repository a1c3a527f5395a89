"""MAC addresses: the one normaliser every layer uses (inventory, DHCP reservations, iPXE names)."""

from __future__ import annotations

import re

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def normalize_mac(value) -> str:
    """`aa:bb:cc:dd:ee:ff` from that, or from `AA-BB-CC-DD-EE-FF` (one separator kind throughout);
    ValueError for anything else."""
    mac = str(value if value is not None else "").strip().lower()
    if not _MAC.match(mac):
        raise ValueError(f"{value!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return mac.replace("-", ":")
