"""The server-side code that a client runs in its own process: the one place a client imports it.

The CLI, the lab and the demo talk to Crowbar over HTTP. A few commands by nature run on the server
host itself, before or without any API to talk to:

- `crowbar server` is the server (crowbar.server's `serve`);
- `crowbar db upgrade` migrates the database the server will open (crowbar.db.migrate);
- `crowbar images build-discovery` builds the boot files into the server's data directory
  (crowbar.provisioner.image);
- `crowbar lab ...` (and `make demo`) build a lab of VMs on this machine: they check the host's
  kernel and iPXE files the lab's server will boot the VMs with, and power on the lab's own VMs
  through the qemu power driver, before the lab's server knows of them.

Each such need is one function here that imports its server-side entry point only when called, so
every other command starts without loading the server, the database layer or the provisioner.
tests/test_layers.py refuses an import of server-side code from any other client module. The
server-side errors a person can cause (a database URL that cannot be used, a database that cannot
be reached) become a CliError here: one line, no traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from crowbar.cli.client import CliError


def serve(listens: list[str], database: str | None, workers: int, data_dir: Path | None,
          provision: str | None, advertise_url: str | None, domain: str | None, **options) -> None:
    """Run the API server, its loops and (with `provision`) the provisioner, until stopped.
    `options`: the discovery and provisioning-listener settings of crowbar.server.main.serve."""
    from crowbar.db.session import UnusableDatabase
    from crowbar.server.main import serve

    try:
        serve(listens, database, workers, data_dir, provision, advertise_url, domain, **options)
    except UnusableDatabase as exc:
        raise CliError(str(exc)) from None


def upgrade_database(url: str) -> tuple[str | None, str | None]:
    """Apply every pending migration; the schema revision (before, after). Opens the database
    first: a URL that cannot be used or a database that cannot be reached is one line, and
    nothing is written."""
    from crowbar.db import migrate
    from crowbar.db.session import Database, UnusableDatabase

    try:
        database = Database(url)
        try:
            database.check()
            before = migrate.current_revision(database.engine)
            migrate.upgrade(database.engine)
            return before, migrate.current_revision(database.engine)
        finally:
            database.dispose()
    except UnusableDatabase as exc:
        raise CliError(str(exc)) from None


def build_discovery_image(cache: Path, kernel_version: str | None, progress: Callable[[str, int, int], None]):
    """The discovery kernel and initramfs (.kernel, .initrd, .digest), built or from the cache."""
    from crowbar.provisioner.image import ImageError, build_discovery_image

    try:
        return build_discovery_image(cache, kernel_version, progress)
    except ImageError as exc:
        raise CliError(str(exc)) from None


def build_os_image(store: Path, name: str, progress: Callable[[str, int, int], None], *,
                   mirror: str | None = None, force: bool = False):
    """OS `name`'s image in `store` (.name, .digest, .path, .manifest), built or from the cache."""
    from crowbar.errors import CrowbarError
    from crowbar.provisioner import osimage

    try:
        return osimage.build(store, name, progress, mirror=mirror, force=force)
    except CrowbarError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"building {name}: {exc}") from None


def os_image_built(store: Path, name: str) -> bool:
    """Whether the image store has an image of OS `name`."""
    from crowbar.provisioner import osimage

    return osimage.current(store, name) is not None


def host_mirror() -> str:
    """The Debian mirror this host's apt uses (the lab's uplink lets it through)."""
    from crowbar.provisioner import osimage

    return osimage.host_mirror()


def host_kernel_version() -> str:
    """The kernel the discovery image will be built from; raises when this host has none usable."""
    from crowbar.provisioner.image import default_kernel_version

    return default_kernel_version()


def ipxe_bios_loader() -> Path:
    """Where the provisioner's TFTP server finds the iPXE loader for BIOS machines."""
    from crowbar.provisioner.dnsmasq import BIOS_BOOT_FILE, IPXE_DIR

    return IPXE_DIR / BIOS_BOOT_FILE


def qemu_power():
    """(the qemu power driver, PowerNode, Qmp, the errors they raise): for the lab's Redfish BMC,
    which powers the lab's VMs through their QMP sockets (crowbar.lab.redfish_qemu)."""
    from crowbar.power.base import PowerError, PowerNode
    from crowbar.power.qemu import QemuPower, Qmp, VmAbsent

    return QemuPower(), PowerNode, Qmp, (PowerError, VmAbsent)


def qmp_client():
    """(Qmp, QmpError, VmAbsent): the qemu power driver's QMP client, for crowbar.lab.vmrun, which
    watches its VM's events through a monitor of its own."""
    from crowbar.power.qemu import Qmp, QmpError, VmAbsent

    return Qmp, QmpError, VmAbsent


def power_on_vm(name: str, qmp: Path) -> None:
    """Power on one of the lab's qemu VMs through its QMP socket (the qemu power driver)."""
    from crowbar.power.base import PowerNode
    from crowbar.power.qemu import QemuPower

    QemuPower().power_on(PowerNode(name=name, settings={"qmp": str(qmp)}))


def reissue_admin_token(url: str, data_dir: Path) -> tuple[Path, list[Path]]:
    """Re-issue the admin token in the database at `url` (crowbar.services.auth): the new one in
    <data dir>/admin.token, and in each of this user's CLI token files that held the old one."""
    from sqlalchemy import select

    from crowbar import config
    from crowbar.db.models import ApiToken
    from crowbar.db.session import Database, UnusableDatabase
    from crowbar.services import auth, bootstrap

    token_file = data_dir / "admin.token"
    try:
        database = Database(url)
        try:
            database.check()
            bootstrap.prepare(database)
            with database.session() as s:
                old = s.scalar(select(ApiToken.token_hash).where(ApiToken.name == auth.ADMIN_TOKEN))
                token = auth.reissue_admin_token(s, token_file, actor="local")
        finally:
            database.dispose()
    except UnusableDatabase as exc:
        raise CliError(str(exc)) from None
    updated = []
    for path in sorted(config.token_registry().glob("*.token")):
        try:
            held = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if old is not None and auth.hash_token(held) == old:
            auth.write_secret(path, token)
            updated.append(path)
    return token_file, updated


def backup_database(url: str, target: Path) -> int:
    """`crowbar db backup`: the size of the backup written to `target` (crowbar.db.backup)."""
    from crowbar.db.backup import BackupError, backup
    from crowbar.db.session import Database, UnusableDatabase

    try:
        database = Database(url)
        try:
            database.check()
            return backup(database, target)
        finally:
            database.dispose()
    except (UnusableDatabase, BackupError) as exc:
        raise CliError(str(exc)) from None


def restore_database(url: str, source: Path, force: bool = False) -> str | None:
    """`crowbar db restore`: the schema revision of the restored database (crowbar.db.backup)."""
    from crowbar.db.backup import BackupError, restore
    from crowbar.db.session import Database, UnusableDatabase

    try:
        database = Database(url)
        try:
            database.check()
            return restore(database, source, force=force)
        finally:
            database.dispose()
    except (UnusableDatabase, BackupError) as exc:
        raise CliError(str(exc)) from None
