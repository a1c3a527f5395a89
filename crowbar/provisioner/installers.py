"""OS installers and boot images: the room for the plugins that put an operating system on a node.

Nothing is registered here yet (the plugin groups are empty in crowbar/plugins.py); the next issues
add the plugins, and this module is where their interfaces live. Both kinds are found by name
through the one plugin registry (`crowbar.plugins.get(group, name)`), so a separate package can add
one with an entry point, like a jig or a power driver.

An OS installer (entry point group `crowbar.os_installers`) is named after the OS it installs, the
`<os>` of the node's `<os>-install` bootenv (crowbar.provisioner.lifecycle, e.g. `debian-12`). It
provides what the provisioner needs while a node is in `hardware-installed` .. `installing`:

- `boot(params)`: the kernel, initrd and kernel arguments iPXE boots the installer with, as the
  `installers` table that `crowbar.provisioner.ipxe.render` takes (today no one passes it, so an
  install bootenv answers "no installer configured for <os>");
- `answers(node, params)`: the unattended-install file (preseed, kickstart, autoinstall, ...) for one
  node, which the installer fetches from the server; it ends the install by reporting the node
  `installed` through the API, so the lifecycle moves on and the next boot is from the local disk.

An image builder (entry point group `crowbar.image_builders`) builds a kernel and initramfs that the
provisioner serves, from what the server host has installed and cached by content, the way
`crowbar.provisioner.image.build_discovery_image` builds the discovery image.

Plugins here are pure machinery, like the rest of crowbar/provisioner/: no database sessions; what
they need of a node is handed to them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path

from crowbar.provisioner.image import DiscoveryImage, Progress
from crowbar.provisioner.ipxe import BootParams, Installer


class OsInstaller(abc.ABC):
    """Installs one operating system on a node over the network."""

    name: str = ""  # the <os> of the `<os>-install` bootenv

    @abc.abstractmethod
    def boot(self, params: BootParams) -> Installer:
        """What iPXE boots to start the installer (paths are relative to the boot endpoint)."""

    @abc.abstractmethod
    def answers(self, node: Mapping[str, object], params: BootParams) -> str:
        """The unattended-install file for `node` (as the API shows it: name, addresses, ...)."""


class ImageBuilder(abc.ABC):
    """Builds a boot image (kernel + initramfs) from what this host has installed."""

    name: str = ""

    @abc.abstractmethod
    def build(self, cache_dir: Path, progress: Progress | None = None) -> DiscoveryImage:
        """The image's kernel, initrd and content digest; from `cache_dir` when built before with the
        same inputs. `progress(step, done, total)` hears of the steps."""
