"""OS installers and image builders: the plugins that put an operating system on a node.

Both kinds are found by name through the one plugin registry (`crowbar.plugins.get(group, name)`),
so a separate package can add one with an entry point, like a jig or a power driver. An OS recipe
(crowbar/provisioner/os/<name>.toml) names the builder that makes its image (`builder`, default
`mmdebstrap`) and the installer that puts it on a node (`installer`, default `image`).

- An image builder (entry point group `crowbar.image_builders`) builds an OS image from a recipe on
  the admin host, into the image store the server serves, cached by content; the built-in
  `mmdebstrap` is crowbar.provisioner.osimage.
- An OS installer (entry point group `crowbar.os_installers`) makes the job the discovery agent
  runs to install an image on one node, from an InstallPlan (disk, firmware, image, first-boot
  data); the built-in `image` is crowbar.provisioner.install (GPT, stream and check, grub, seed).
  An installer that needs a network installer instead (preseed, kickstart) would boot it through the
  `<os>-install` bootenv (crowbar.provisioner.ipxe renders it from its kernel, initrd and arguments).

Plugins here are pure machinery, like the rest of crowbar/provisioner/: no database sessions; what
they need of a node is handed to them.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING

from crowbar.provisioner.image import Progress

if TYPE_CHECKING:
    from crowbar.provisioner.install import InstallPlan
    from crowbar.provisioner.osimage import OsImage, Recipe


class OsInstaller(abc.ABC):
    """Installs an OS image on a node, as one job of its discovery agent."""

    name: str = ""

    @abc.abstractmethod
    def job(self, plan: InstallPlan) -> str:
        """The shell script (busybox sh) the agent runs; it reports its phases and ends with exit 0
        only when the node's disk boots the image (InvalidInput for a plan it cannot carry out)."""


class ImageBuilder(abc.ABC):
    """Builds an OS image from a recipe on the admin host."""

    name: str = ""

    @abc.abstractmethod
    def build(self, store: Path, recipe: Recipe, progress: Progress | None = None, *,
              mirror: str | None = None, force: bool = False) -> OsImage:
        """The image, from `store` when one with the same inputs was built before."""
