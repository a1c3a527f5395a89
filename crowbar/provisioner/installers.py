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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crowbar.provisioner.image import Progress

# --- what the plugins are handed and give back ---

UNSAID_COMPRESSION = "gzip"  # of an image whose manifest names none: those built before FORMAT 2


@dataclass(frozen=True)
class Recipe:
    """An OS recipe (crowbar/provisioner/os/<name>.toml) as `osimage.load_recipe` reads it: what an
    image builder builds and which plugins build and install it."""

    name: str
    title: str
    family: str
    version: str
    suite: str
    arch: str
    components: tuple[str, ...]
    mirror: str
    kernel: str
    bootloader: str
    first_boot: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    # systemd units the packages enable that must not start at boot (roles start them)
    disabled_services: tuple[str, ...] = ()
    builder: str = "mmdebstrap"  # the image builder plugin (crowbar.image_builders)
    installer: str = "image"     # the OS installer plugin (crowbar.os_installers)
    source: str = ""  # the recipe file's text, part of the cache key

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "family": self.family, "version": self.version,
                "suite": self.suite, "arch": self.arch, "components": list(self.components),
                "mirror": self.mirror, "kernel": self.kernel, "bootloader": self.bootloader,
                "first_boot": self.first_boot, "packages": list(self.packages),
                "disabled_services": list(self.disabled_services), "builder": self.builder,
                "installer": self.installer}


@dataclass(frozen=True)
class OsImage:
    """A built image in the store (osimage's docstring has the layout): what a builder gives back."""

    name: str
    digest: str
    path: Path  # the root.img
    manifest: dict = field(default_factory=dict)

    @property
    def compression(self) -> str:
        """What its bytes are compressed with (its manifest's `compression`)."""
        return self.manifest.get("compression", UNSAID_COMPRESSION)


@dataclass(frozen=True)
class InstallPlan:
    """What an OS installer is handed for one node: made by crowbar.services.install."""

    node: str             # the node's name (FQDN)
    disk: str             # /dev/vda
    disk_bytes: int
    firmware: str         # bios | uefi
    image_path: str       # where the server serves the image (the agent's $CROWBAR_URL is prefixed)
    image_size: int       # bytes served (compressed)
    image_sha256: str     # of the bytes served
    fs_size: int          # bytes of the filesystem the root partition must hold
    progress_path: str    # where the job posts its phases (the agent's token authenticates)
    seed: Mapping[str, str]  # NoCloud seed files: meta-data, user-data, network-config
    compression: str = UNSAID_COMPRESSION  # of the bytes served: zstd or gzip (OsImage.compression)


# --- the plugins ---

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
