"""The one plugin registry: jigs, power drivers, OS installers and image builders, by name.

Plugins are classes found through entry points (`[project.entry-points."crowbar.power"]` in a
package's pyproject.toml); the built-in ones are also listed here, so a source checkout that was
never pip-installed (or an installed package whose metadata predates a new built-in) still finds
them. An entry point of the same name wins over the built-in table: that is how a site replaces a
driver. A plugin's module is imported only when the plugin is first used, and each plugin class is
instantiated once (plugins keep no per-call state on themselves).

`register(group, name, cls)` adds a plugin in-process (tests register slow or failing power
drivers that way); `unregister` takes it away again, and `registered(...)` does both around a block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

JIGS = "crowbar.jigs"
POWER = "crowbar.power"
OS_INSTALLERS = "crowbar.os_installers"
IMAGE_BUILDERS = "crowbar.image_builders"

KINDS = {JIGS: "jig", POWER: "power driver", OS_INSTALLERS: "OS installer", IMAGE_BUILDERS: "image builder"}

BUILTIN: dict[str, dict[str, str]] = {
    JIGS: {
        "noop": "crowbar.jigs.noop:NoopJig",
        "test": "crowbar.jigs.test:TestJig",
        "script": "crowbar.jigs.script:ScriptJig",
        "ansible": "crowbar.jigs.ansible:AnsibleJig",
        "puppet": "crowbar.jigs.puppet:PuppetJig",
    },
    POWER: {
        "qemu": "crowbar.power.qemu:QemuPower",
        "manual": "crowbar.power.manual:ManualPower",
        "ipmi": "crowbar.power.ipmi:IpmiPower",
        "redfish": "crowbar.power.redfish:RedfishPower",
        "fake": "crowbar.power.fake:FakePower",
    },
    OS_INSTALLERS: {"image": "crowbar.provisioner.install:ImageInstaller"},
    IMAGE_BUILDERS: {"mmdebstrap": "crowbar.provisioner.osimage:MmdebstrapBuilder"},
}


class UnknownPlugin(KeyError):
    """No plugin of that name in the group; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown plugin"


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


@cache
def _registry(group: str) -> dict:
    found = {ep.name: ep.load for ep in entry_points(group=group)}
    builtin = {name: (lambda t=target: _import(t)) for name, target in BUILTIN.get(group, {}).items()}
    return {**builtin, **found}


_LOCAL: dict[str, dict[str, type]] = {}  # in-process registrations, over everything else


def names(group: str) -> list[str]:
    return sorted(set(_registry(group)) | set(_LOCAL.get(group, ())))


@cache
def get(group: str, name: str) -> Any:
    """The shared instance of plugin `name` in `group`; UnknownPlugin if there is none."""
    local = _LOCAL.get(group, {})
    if name in local:
        return local[name]()
    try:
        loader = _registry(group)[name]
    except KeyError:
        kind = KINDS.get(group, group)
        raise UnknownPlugin(f"unknown {kind} {name!r}; known: {', '.join(names(group)) or 'none'}") from None
    return loader()()


def register(group: str, name: str, cls: type) -> None:
    """Make `cls` the plugin `name` of `group` in this process (over an entry point or built-in of
    that name, until `unregister`)."""
    _LOCAL.setdefault(group, {})[name] = cls
    get.cache_clear()


def unregister(group: str, name: str) -> None:
    """Forget an in-process registration: the entry point or built-in of that name, if any, is back."""
    _LOCAL.get(group, {}).pop(name, None)
    get.cache_clear()


@contextmanager
def registered(group: str, name: str, cls: type) -> Iterator[Any]:
    """`register` for the duration of a block; yields the plugin's instance."""
    register(group, name, cls)
    try:
        yield get(group, name)
    finally:
        unregister(group, name)
