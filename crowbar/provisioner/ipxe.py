"""iPXE scripts, one per node and bootenv, served from the server's HTTP boot endpoint.

dnsmasq hands every iPXE client the same URL, `<boot url>/${netX/mac:hexhyp}.ipxe`; iPXE expands
the setting (netX is the NIC that just did DHCP), so each machine fetches a script named after its
own MAC and the server answers from the node's bootenv (`crowbar.provisioner.lifecycle`):

- no node, or bootenv `discovery`: the discovery image, told where the server is (`crowbar.url=`)
  and, for a known node, the one-time nonce its agent proves this boot with (`crowbar.nonce=`);
- `<os>-install`: that OS's installer from the INSTALLERS-like table passed in, or a script that
  says plainly that none is configured and hands the machine back to its firmware;
- `local`: the first local disk;
- `none` (a node being deleted): nothing, back to the firmware.

Everything is a pure function of its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from crowbar.network.mac import normalize_mac
from crowbar.provisioner.lifecycle import DISCOVERY, LOCAL, NONE

SCRIPT_SUFFIX = ".ipxe"
CONSOLE = ("tty0", "ttyS0,115200n8")
FETCH_TRIES = 3  # a boot script's attempts at fetching and booting its kernel and initrd

_OS = re.compile(r"^[a-z0-9][a-z0-9._]*(-[a-z0-9._]+)*$")
_INSTALL = re.compile(r"^(?P<os>.+)-install$")


@dataclass(frozen=True)
class BootParams:
    """Where a booting machine finds things. `boot_url` is the HTTP boot endpoint (no trailing /)."""

    server_url: str
    boot_url: str
    discovery_kernel: str = "discovery/vmlinuz"
    discovery_initrd: str = "discovery/initrd.img"
    console: tuple[str, ...] = CONSOLE

    def url(self, path: str) -> str:
        """An absolute URL as it is, a relative path under the boot endpoint."""
        return path if "://" in path else f"{self.boot_url.rstrip('/')}/{path.lstrip('/')}"


@dataclass(frozen=True)
class Installer:
    """An OS installer: kernel and initrd (absolute URLs or paths under the boot endpoint), args."""

    kernel: str
    initrd: str
    args: tuple[str, ...] = ()


def dhcp_script_url(boot_url: str) -> str:
    """The boot file name dnsmasq gives iPXE clients; iPXE fills in the MAC."""
    return f"{boot_url.rstrip('/')}/${{netX/mac:hexhyp}}{SCRIPT_SUFFIX}"


def script_name(mac: str) -> str:
    """The file name under the boot endpoint that the machine with `mac` asks for."""
    return normalize_mac(mac).replace(":", "-") + SCRIPT_SUFFIX


def mac_from_script_name(name: str) -> str:
    """The MAC (aa:bb:...) from a requested script name; ValueError if it is not one of ours."""
    if not name.endswith(SCRIPT_SUFFIX):
        raise ValueError(f"not an iPXE script name: {name!r}")
    return normalize_mac(name[: -len(SCRIPT_SUFFIX)])


_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def render(bootenv: str | None, params: BootParams, *, mac: str | None = None,
           installers: Mapping[str, Installer] | None = None, nonce: str | None = None) -> str:
    """The iPXE script for a machine whose node has `bootenv` (None: no node, an unknown machine).

    `nonce` (discovery only) goes on the kernel command line as `crowbar.nonce=`."""
    who = normalize_mac(mac) if mac else "unknown machine"
    if nonce is not None and not _NONCE.match(nonce):
        raise ValueError("a boot nonce is 16-128 characters of A-Z a-z 0-9 _ -")
    if bootenv in (None, DISCOVERY):
        return _discovery(params, who, nonce)
    if bootenv == LOCAL:
        return _local(who)
    if bootenv == NONE:
        return _script(who, NONE,
                       "echo Crowbar: this node is being deleted, nothing to boot",
                       "exit 1")
    match = _INSTALL.match(bootenv)
    if not match:
        raise ValueError(f"unknown bootenv {bootenv!r}: expected discovery, local, none "
                         "or <os>-install")
    return _install(match["os"], params, who, installers or {})


def _script(who: str, bootenv: str, *lines: str) -> str:
    return "\n".join(("#!ipxe", f"# crowbar: {who}, bootenv {bootenv}", *lines)) + "\n"


def _kernel_lines(kernel: str, initrd: str, args: list[str]) -> list[str]:
    # The EFI stub finds the initrd by the name iPXE registered it under (the URL's last part).
    initrd_name = initrd.rstrip("/").rsplit("/", 1)[-1]
    # A fetch that fails (the server busy, a packet lost past iPXE's own retries) is tried again
    # FETCH_TRIES times, 5 s apart, before the machine goes back to its firmware: that would boot
    # the next device, an installed system's disk, and a release or reinstall would wait on a
    # node that never came (services/install._missed_netboot then power-cycles it again).
    # The count is a string that grows by one x a try (iPXE 1.0 scripts have no arithmetic).
    return [
        "set tries x",
        ":load",
        f"kernel {kernel} initrd={initrd_name} {' '.join(args)}".rstrip() + " || goto retry",
        f"initrd {initrd} || goto retry",
        "boot || goto retry",
        ":retry",
        "iseq ${tries} " + "x" * FETCH_TRIES + " && goto failed ||",
        "echo Crowbar: loading the boot files failed (try ${tries}), trying again in 5 s",
        "imgfree ||",
        "sleep 5 ||",
        "set tries ${tries}x",
        "goto load",
        ":failed",
        "echo Crowbar: boot failed, handing the machine back to its firmware",
        "exit 1",
    ]


def _boot_args(params: BootParams) -> list[str]:
    # BOOTIF (pxelinux's convention) tells the booted system which NIC it came in on.
    return [f"crowbar.url={params.server_url}", "BOOTIF=01-${netX/mac:hexhyp}",
            *(f"console={c}" for c in params.console)]


def _discovery(params: BootParams, who: str, nonce: str | None) -> str:
    args = _boot_args(params) + ([f"crowbar.nonce={nonce}"] if nonce else [])
    return _script(who, DISCOVERY,
                   "echo Crowbar: booting the discovery image",
                   *_kernel_lines(params.url(params.discovery_kernel),
                                  params.url(params.discovery_initrd), args))


def _install(os: str, params: BootParams, who: str, installers: Mapping[str, Installer]) -> str:
    bootenv = f"{os}-install"
    if not _OS.match(os):
        raise ValueError(f"not an OS name: {os!r}")
    installer = installers.get(os)
    if installer is None:
        known = ", ".join(sorted(installers)) or "none"
        return _script(who, bootenv,
                       f"echo Crowbar: no installer configured for {os} (configured: {known})",
                       "echo Crowbar: set the node's OS or configure the installer, then reboot it",
                       "exit 1")
    return _script(who, bootenv,
                   f"echo Crowbar: booting the {os} installer",
                   *_kernel_lines(params.url(installer.kernel), params.url(installer.initrd),
                                  [*installer.args, *_boot_args(params)]))


def _local(who: str) -> str:
    # BIOS: `sanboot --drive 0x80` boots the first disk's MBR directly, which is more dependable
    # than `exit` (some BIOSes do not try the next device after a PXE ROM returns). UEFI: iPXE
    # builds before 2024 cannot sanboot a local disk, and `exit 0` sends some firmware (Dell,
    # Lenovo) into setup, so `exit 1` lets the firmware move on to the next boot entry.
    return _script(who, LOCAL,
                   "echo Crowbar: booting from the local disk",
                   "iseq ${platform} efi && goto firmware ||",
                   "sanboot --no-describe --drive 0x80 || goto firmware",
                   ":firmware",
                   "exit 1")
