"""Boot scripts: what a PXE-booting machine is told to boot, from the bootenv of the node that owns
its MAC (an unknown machine boots the discovery image). The rendering is crowbar.provisioner.ipxe.

A known node's discovery script carries a fresh one-time nonce (`crowbar.nonce=`): its agent
posts it back with the inventory, and only that proves the post comes from the boot the server
served, so that knowing a node's MAC is not enough to re-find it (docs/security.md). The node keeps
only the nonce's hash and its expiry; each script served replaces the previous nonce. A request
whose link-layer address is known not to be the script's MAC (`Peer`) gets the script without one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Node, NodeMac
from crowbar.provisioner import ipxe, lifecycle
from crowbar.provisioner.discovery import NONCE_TTL

log = logging.getLogger("crowbar.boot")


@dataclass(frozen=True)
class Peer:
    """Who sent a provisioning request, as far as the server can know.

    `checked` is True when the server binds provisioning to the link (`crowbar server --provision`):
    then `mac` is the requester's MAC in the server's neighbour table on the provisioning
    interface, or None when the requester is not a neighbour there. Unchecked, `mac` means nothing.
    """

    address: str | None = None
    checked: bool = False
    mac: str | None = None

    def may_be(self, macs) -> bool:
        """Whether this request may come from a machine with one of `macs` (True when unchecked)."""
        return not self.checked or (self.mac is not None and self.mac in macs)

    def describe(self) -> str:
        where = self.address or "an unknown address"
        if not self.checked:
            return where
        return f"{where} ({self.mac or 'not a neighbour on the provisioning interface'})"


UNCHECKED = Peer()


def hash_nonce(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def boot_script(session: Session, mac: str, params: ipxe.BootParams, peer: Peer = UNCHECKED,
                now: datetime | None = None, read_only: bool = False) -> str | None:
    """The iPXE script for the machine with `mac` (normalised, aa:bb:...). `read_only`: None
    instead when the script needs a write (a known node's discovery boot gets a new nonce): an
    unknown machine's script, or a known one booting its disk or installer, is a read."""
    node = session.scalar(select(Node).join(NodeMac, NodeMac.node_id == Node.id).where(NodeMac.mac == mac))
    if node is None:
        return ipxe.render(None, params, mac=mac)
    if read_only and node.bootenv == lifecycle.DISCOVERY:
        return None
    nonce = None
    if node.bootenv == lifecycle.DISCOVERY:
        if peer.may_be({mac}):
            nonce = secrets.token_urlsafe(24)
            node.boot_nonce_hash = hash_nonce(nonce)
            node.boot_nonce_expires_at = (now or datetime.now(timezone.utc)) + NONCE_TTL
        else:  # someone else asks for this node's script: it boots, but proves nothing
            log.warning("discovery script for %s (node %s) asked by %s: served without a nonce",
                        mac, node.name, peer.describe())
    # The boot log: which script each boot of a known node got (how a reboot is shown to come back
    # from the local disk, not the discovery image). A log line, not an event: the route is open,
    # and a flood of requests must not grow the database.
    log.info("boot script for %s (node %s): %s", mac, node.name, node.bootenv)
    return ipxe.render(node.bootenv, params, mac=mac, nonce=nonce)
