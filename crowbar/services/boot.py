"""Boot scripts: what a PXE-booting machine is told to boot, from the bootenv of the node that owns
its MAC (an unknown machine boots the discovery image). The rendering is crowbar.provisioner.ipxe."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Node, NodeMac
from crowbar.provisioner import ipxe


def boot_script(session: Session, mac: str, params: ipxe.BootParams) -> str:
    """The iPXE script for the machine with `mac` (normalised, aa:bb:...)."""
    bootenv = session.scalar(select(Node.bootenv).join(NodeMac, NodeMac.node_id == Node.id)
                             .where(NodeMac.mac == mac))
    return ipxe.render(bootenv, params, mac=mac)
