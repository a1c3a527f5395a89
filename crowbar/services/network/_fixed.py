"""The Neutron settings as stored, and nova_fixed's provider segment kept in step with the template.

This is the part of Neutron that storing a template must touch, so it sits below `templates`
(which calls `sync_fixed_network` whenever it writes a template) and `neutron` builds on it.

- `neutron_settings`: the stored Neutron options over `NEUTRON_DEFAULTS` (a missing key takes
  crowbar.network.neutron's default).
- `sync_fixed_network`: nova_fixed is kept as a provider VLAN network on its own tag, the first of
  the tenant VLAN range (crowbar.network.neutron), so that tenant networks get the tags above it.
  Created with the template, moved when nova_fixed's VLAN or the physical network changes;
  refused (409) when a tenant network already holds that tag.
"""

from __future__ import annotations

import uuid

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from crowbar.db.models import utcnow
from crowbar.errors import Conflict
from crowbar.network import neutron
from crowbar.network.model import NetworkTemplate
from crowbar.services.network._db import SEGMENTS, SETTINGS, SETTINGS_ID

NEUTRON_DEFAULTS = {"physical_network": neutron.DEFAULT_PHYSNET,
                    "tenant_vlan_count": neutron.DEFAULT_TENANT_VLAN_COUNT,
                    "vni_ranges": [list(neutron.DEFAULT_VNI_RANGE)],
                    "tenant_network_types": ["vlan"]}


def neutron_settings(session: Session) -> dict:
    stored = session.execute(select(SETTINGS.c.neutron).where(SETTINGS.c.id == SETTINGS_ID)).scalar()
    return {**NEUTRON_DEFAULTS, **(stored or {})}


def sync_fixed_network(session: Session, template: NetworkTemplate,
                       settings: dict | None = None) -> None:
    """Keep nova_fixed as a provider VLAN network on its own tag (the first of the tenant range),
    so that tenant networks start one above it, as Crowbar's Neutron deployment did."""
    fixed = template.networks.get(neutron.FIXED_NETWORK)
    if fixed is None or fixed.vlan is None:
        return
    settings = settings or neutron_settings(session)
    physnet = settings["physical_network"]
    row = session.execute(select(SEGMENTS).where(SEGMENTS.c.provider.is_(True),
                                                 SEGMENTS.c.name == neutron.FIXED_NETWORK)).first()
    holder = session.execute(select(SEGMENTS).where(
        SEGMENTS.c.network_type == "vlan", SEGMENTS.c.physical_network == physnet,
        SEGMENTS.c.segmentation_id == fixed.vlan)).first()
    if row is not None and (row.segmentation_id, row.physical_network) == (fixed.vlan, physnet):
        return
    if holder is not None and (row is None or holder.id != row.id):
        raise Conflict(f"network {neutron.FIXED_NETWORK!r}: VLAN {fixed.vlan} on physical network "
                       f"{physnet} is in use by tenant network {holder.name or holder.network_id!r} "
                       f"({holder.network_id}); delete it or choose another vlan", field="vlan")
    if row is not None:
        session.execute(update(SEGMENTS).where(SEGMENTS.c.id == row.id)
                        .values(segmentation_id=fixed.vlan, physical_network=physnet))
    else:
        session.execute(insert(SEGMENTS).values(
            network_id=str(uuid.uuid4()), name=neutron.FIXED_NETWORK, network_type="vlan",
            physical_network=physnet, segmentation_id=fixed.vlan, provider=True, created_at=utcnow()))
