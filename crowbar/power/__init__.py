"""Power drivers: how Crowbar turns a node on, off, or around, whatever the hardware.

A driver is found by name through the `crowbar.power` entry point group (so a separate package can
add one), falling back to the built-in drivers when the running checkout has not declared them.
"""

from crowbar.power.base import (
    BUILTIN, PowerDriver, PowerError, PowerNode, driver_names, get_driver,
)

__all__ = ["BUILTIN", "PowerDriver", "PowerError", "PowerNode", "driver_names", "get_driver"]
