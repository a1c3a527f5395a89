"""Rules for the discovery path, the one unauthenticated write (docs/security.md): what an inventory
may look like, how fast new machines may be created, how long a boot's nonce lives.

Pure: no database. The discovery service (crowbar.services.provisioning) and its route apply them.

- `parse_inventory(raw)`: the body of `POST /api/v2/discovery`, at most MAX_INVENTORY_BYTES
  (413), strict JSON (no NaN or Infinity, no lone surrogates), nested at most MAX_DEPTH levels,
  at most MAX_NICS NICs, MAX_ITEMS entries in any list or object and MAX_STRING characters in any
  string or key (422, with the field). The agent's real inventories are a few KiB, three levels
  deep, with strings of a few dozen characters.
- `TokenBucket`: the server-wide limit on nodes created through discovery (429 + Retry-After).
- NONCE_TTL: how long the nonce in a node's discovery boot script may be used to re-find it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from crowbar.documents import loads_strict
from crowbar.errors import InvalidInput, TooLarge

MAX_INVENTORY_BYTES = 256 * 1024
MAX_DEPTH = 16
MAX_NICS = 64
MAX_ITEMS = 1024
MAX_STRING = 1024

NONCE_TTL = timedelta(minutes=20)  # a discovery boot posts within a minute or two
NONCE_HEADER = "X-Crowbar-Nonce"  # how the agent sends the nonce of the boot it runs

DEFAULT_RATE = 1.0  # nodes created through discovery per second, sustained, per server
DEFAULT_BURST = 50  # ... and at once (a rack powered on together)


def parse_inventory(raw: bytes) -> dict:
    """The inventory in `raw` (the request body), checked against every limit above."""
    if len(raw) > MAX_INVENTORY_BYTES:
        raise too_large(len(raw))
    # Firmware may put non-UTF-8 bytes in DMI strings; the agent sends them byte for byte.
    text = raw.decode("utf-8", errors="replace")
    inventory = loads_strict(text, field="body", what="the inventory")  # no NaN, surrogates, NUL
    check_inventory(inventory)
    return inventory


def too_large(size: int | None = None) -> TooLarge:
    got = f" (got {size} bytes)" if size is not None else ""
    return TooLarge(f"the inventory is larger than {MAX_INVENTORY_BYTES // 1024} KiB{got}", field="body")


def check_inventory(inventory) -> None:
    """Refuse an inventory that breaks a limit; the message names the first offending path."""
    if not isinstance(inventory, dict):
        raise InvalidInput("the inventory must be a JSON object", field="inventory")
    nics = inventory.get("nics")
    if isinstance(nics, list) and len(nics) > MAX_NICS:
        raise InvalidInput(f"the inventory lists {len(nics)} NICs; at most {MAX_NICS} are accepted",
                           field="nics")
    stack: list[tuple[object, str, int]] = [(inventory, "inventory", 1)]
    while stack:  # iterative: no recursion however the document is shaped
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{path}: the inventory is nested deeper than {MAX_DEPTH} levels",
                               field=_top(path))
        if len(value) > MAX_ITEMS:
            raise InvalidInput(f"{path} has {len(value)} entries; at most {MAX_ITEMS} are accepted",
                               field=_top(path))
        if isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, f"{path} key")
                stack.append((item, f"{path}.{key[:40]}", depth + 1))
        else:
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_string(value: str, path: str) -> None:
    if len(value) > MAX_STRING:
        raise InvalidInput(f"{path} is {len(value)} characters long; at most {MAX_STRING} are accepted",
                           field=_top(path))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\\ud800): no database or client can store it
        raise InvalidInput(f"{path} holds a lone surrogate (not a Unicode character)",
                           field=_top(path)) from None


def _top(path: str) -> str:
    """The top-level field a path is in: inventory.nics[3].mac -> nics."""
    rest = path.removeprefix("inventory").lstrip(".")
    for sep in ".[ ":
        rest = rest.split(sep, 1)[0]
    return rest or "inventory"


class TokenBucket:
    """A token bucket: `burst` tokens at most, refilled at `rate` per second; thread-safe.

    `take()` spends one token and answers 0, or spends nothing and answers the seconds until one
    is there. A rate of 0 with a burst of 0 refuses everything; `None` as rate means no limit.
    """

    def __init__(self, rate: float | None = DEFAULT_RATE, burst: int = DEFAULT_BURST,
                 clock: Callable[[], float] = time.monotonic):
        if rate is not None and (rate < 0 or burst < 0 or not math.isfinite(rate)):
            raise ValueError(f"a rate limit needs a rate and a burst >= 0 (got {rate}, {burst})")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        if self.rate is None:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            if self.rate == 0:
                return 3600.0
            return (1 - self._tokens) / self.rate
