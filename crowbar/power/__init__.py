"""Power drivers: how Crowbar turns a node on, off, or around, whatever the hardware.

A driver is found by name through the one plugin registry (`crowbar.plugins`, entry point group
`crowbar.power`), falling back to the built-in drivers when the running checkout has not declared them.
"""

from crowbar.power.base import PowerDriver, PowerError, PowerNode, Setting, driver_names, get_driver

__all__ = ["PowerDriver", "PowerError", "PowerNode", "Setting", "driver_names", "get_driver"]
