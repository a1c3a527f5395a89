"""Choosing a node's address on a network: the pure part of IP allocation.

The DB layer calls this inside one transaction per allocation:

    used = UsedAddresses(addresses already allocated in this network's subnet)
    address = choose_address(network, "host", used, existing=<node's current address or None>,
                             hint=<address the operator asked for or None>)
    INSERT the allocation; a UNIQUE constraint on the address makes a concurrent winner
    fail the loser's transaction, which retries with a fresh `used`.

`used` must hold every address taken in the subnet, including those of networks that share it
(admin, bmc and bmc_vlan share 192.168.124.0/24). Allocating many addresses in one go: keep one
`UsedAddresses` and `add` each chosen address; finding the first free address is a bisection,
so 10,000 allocations stay fast.

Order (Crowbar 1 and 2):
1. `existing`, the node's current address on this network, if it is still a host address of the
   subnet (after a renumbering it is not, and a new one is chosen);
2. `hint`, if it is a free host address of the subnet and not inside another named range of
   the network. It may lie outside every range (a static address the operator picked), but not
   in, say, the dhcp pool when asking for `host`. An unusable hint is skipped, as Crowbar did;
3. the lowest free address of the requested range, or of `host` when the network has no range
   of that name.
The ranges are used as given: `validate_template` already keeps them off reserved addresses.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right, insort
from typing import Iterable

from crowbar.errors import Conflict, InvalidInput
from crowbar.network.model import AddressRange, IPAddress, Network, address_problem

FALLBACK_RANGE = "host"


class UnknownRange(InvalidInput):
    def __init__(self, network: Network, range_name: str):
        known = ", ".join(network.ranges) or "none"
        super().__init__(f"network {network.name!r}: no range {range_name!r} and no "
                         f"{FALLBACK_RANGE!r} range to fall back to (ranges: {known})",
                         field="range")
        self.network, self.range_name = network.name, range_name


class RangeExhausted(Conflict):
    def __init__(self, network: Network, range_name: str, span: AddressRange):
        size = int(span.end) - int(span.start) + 1
        super().__init__(f"network {network.name!r}: range {range_name!r} ({span}) is exhausted: "
                         f"all {size} addresses are in use", field="range")
        self.network, self.range_name = network.name, range_name


def _as_int(address: IPAddress | str | int) -> int:
    return address if isinstance(address, int) else int(ipaddress.ip_address(address))


class UsedAddresses:
    """The addresses taken in one subnet, kept as sorted integers so the lowest free address of
    a range is found by bisection instead of a scan."""

    def __init__(self, addresses: Iterable[IPAddress | str | int] = ()):
        self._sorted = sorted({_as_int(address) for address in addresses})

    def __len__(self) -> int:
        return len(self._sorted)

    def __contains__(self, address: IPAddress | str | int) -> bool:
        value = _as_int(address)
        i = bisect_left(self._sorted, value)
        return i < len(self._sorted) and self._sorted[i] == value

    def add(self, address: IPAddress | str | int) -> None:
        if address not in self:
            insort(self._sorted, _as_int(address))

    def first_free(self, first: int, last: int) -> int | None:
        """The lowest integer in first..last not taken, or None.

        The taken values from `first` on are strictly increasing, so `taken[lo + k] == first + k`
        holds exactly for a prefix of k: bisect for the end of that prefix.
        """
        lo, hi = bisect_left(self._sorted, first), bisect_right(self._sorted, last)
        low, high = 0, hi - lo
        while low < high:
            mid = (low + high) // 2
            if self._sorted[lo + mid] == first + mid:
                low = mid + 1
            else:
                high = mid
        candidate = first + low
        return candidate if candidate <= last else None


def _host_address(network: Network, value: IPAddress | str, what: str) -> IPAddress | None:
    """`value` parsed, if it is a usable host address of the network's subnet."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(f"network {network.name!r}: {what} {value!r} is not an IP address",
                           field=what) from None
    return None if address_problem(network.subnet, address) else address


def resolve_range(network: Network, range_name: str) -> tuple[str, AddressRange]:
    """The range to allocate from: `range_name`, else `host`."""
    for name in (range_name, FALLBACK_RANGE):
        if name in network.ranges:
            return name, network.ranges[name]
    raise UnknownRange(network, range_name)


def choose_address(network: Network, range_name: str, used: UsedAddresses | Iterable,
                   existing: IPAddress | str | None = None,
                   hint: IPAddress | str | None = None) -> IPAddress:
    """The address to allocate (see the module docstring for the order); deterministic."""
    if not isinstance(used, UsedAddresses):
        used = UsedAddresses(used)
    if existing is not None:
        current = _host_address(network, existing, "existing")
        if current is not None:
            return current
    name, span = resolve_range(network, range_name)
    if hint is not None:
        wanted = _host_address(network, hint, "hint")
        in_other_range = wanted is not None and any(
            other.start <= wanted <= other.end for other_name, other in network.ranges.items()
            if other_name != name and other.start.version == wanted.version)
        if wanted is not None and wanted not in used and not in_other_range:
            return wanted
    free = used.first_free(int(span.start), int(span.end))
    if free is None:
        raise RangeExhausted(network, name, span)
    return type(span.start)(free)  # the range's own class: small IPv6 integers stay IPv6
