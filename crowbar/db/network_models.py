"""The networking schema (issue 3): the network template, IP allocations, Neutron tenant segments.

Changes here must come with an Alembic migration (0002_networks.py and later).

- `network_settings`: the template-level part of the network template (mode, teaming mode,
  conduit_map, interface_map), the Neutron options Crowbar derives settings from, and the
  template's version token. One row.
- `networks` + `network_ranges`: one row per network, one per named range; `position` keeps the
  template's order (the plan and the default route depend on it).
- `network_allocations`: a node's address on a network. UNIQUE(network_id, address) and
  UNIQUE(network_id, node_id) make a duplicate impossible within a network whatever the caller
  does; `address_key` is the address as 32 lower-case hex digits, so SQL can compare and sort
  IPv4 and IPv6 addresses (the lowest free address is searched in SQL). Networks that share a
  subnet (admin, bmc and bmc_vlan) are kept apart by the allocator, which locks their rows (see
  crowbar.services.network). Triggers (created by the migration) bump
  `network_settings.released` on every DELETE of an allocation and every UPDATE of its address,
  which voids the allocator's per-range cursors.
- `neutron_segments`: tenant networks and the VLAN or VXLAN segment each holds.
  UNIQUE(network_type, physical_network, segmentation_id): two networks never share a segment.
  VXLAN segments have physical_network '' (not NULL, so that the constraint holds for them too).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crowbar.db.models import Base, JSONType, UTCDateTime, utcnow


class NetworkSettings(Base):
    __tablename__ = "network_settings"
    id: Mapped[int] = mapped_column(primary_key=True)  # always 1
    mode: Mapped[str] = mapped_column(String(16), default="single")
    teaming_mode: Mapped[int] = mapped_column(Integer, default=5)
    conduit_map: Mapped[list] = mapped_column(JSONType, default=list)
    interface_map: Mapped[list] = mapped_column(JSONType, default=list)
    # {"physical_network": "physnet1", "tenant_vlan_count": 2000, "vni_ranges": [[1001, 2000]],
    #  "tenant_network_types": ["vlan"]}: missing keys take crowbar.network.neutron's defaults.
    neutron: Mapped[dict] = mapped_column(JSONType, default=dict)
    # A new random token on every change of the template: processes cache the parsed template
    # under it (a counter could repeat after a rolled-back change; a random token cannot).
    version: Mapped[str] = mapped_column(String(32), default="")
    # Bumped by database triggers whenever an allocation is deleted (by Crowbar, or by a node's
    # deletion cascading) or changes address: the ranges' cursors below are valid only for the
    # epoch they were computed in.
    released: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NetworkRow(Base):
    __tablename__ = "networks"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    category: Mapped[str] = mapped_column(String(64))
    subnet: Mapped[str] = mapped_column(String(64))  # CIDR, e.g. 192.168.124.0/24
    vlan: Mapped[int | None] = mapped_column(Integer, nullable=True)
    use_vlan: Mapped[bool] = mapped_column(Boolean, default=False)
    add_bridge: Mapped[bool] = mapped_column(Boolean, default=False)
    mtu: Mapped[int] = mapped_column(Integer, default=1500)
    conduit: Mapped[str] = mapped_column(String(64))
    router: Mapped[str | None] = mapped_column(String(64), nullable=True)
    router_pref: Mapped[int | None] = mapped_column(Integer, nullable=True)
    team_mode: Mapped[int] = mapped_column(Integer, default=5)
    use_team: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ranges: Mapped[list[NetworkRange]] = relationship(
        back_populates="network", order_by="NetworkRange.position", cascade="all, delete-orphan",
        passive_deletes=True)


class NetworkRange(Base):
    __tablename__ = "network_ranges"
    __table_args__ = (UniqueConstraint("network_id", "name", name="uq_network_ranges_network_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)
    first: Mapped[str] = mapped_column(String(64))
    last: Mapped[str] = mapped_column(String(64))
    # The allocator's low-water mark (an address key): every address of [first, cursor) was
    # taken when it was written, in release epoch `cursor_epoch`. Taking more addresses keeps
    # it true; releasing one bumps the epoch, which makes the cursor void until recomputed.
    cursor: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cursor_epoch: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    network: Mapped[NetworkRow] = relationship(back_populates="ranges")


class NetworkAllocation(Base):
    __tablename__ = "network_allocations"
    __table_args__ = (
        UniqueConstraint("network_id", "address", name="uq_network_allocations_address"),
        UniqueConstraint("network_id", "node_id", name="uq_network_allocations_node"),
        # Also the index the allocator searches: the lowest free address of a range.
        UniqueConstraint("network_id", "address_key", name="uq_network_allocations_address_key"),
        Index("ix_network_allocations_node_id", "node_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    range: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))  # canonical text (ipaddress's str)
    address_key: Mapped[str] = mapped_column(String(32))  # int(address) as 32 hex digits
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NeutronSegment(Base):
    __tablename__ = "neutron_segments"
    __table_args__ = (
        UniqueConstraint("network_type", "physical_network", "segmentation_id",
                         name="uq_neutron_segments_segment"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[str] = mapped_column(String(36), unique=True)  # the Neutron network's uuid
    name: Mapped[str] = mapped_column(String(255), default="")
    network_type: Mapped[str] = mapped_column(String(16))  # vlan | vxlan
    physical_network: Mapped[str] = mapped_column(String(64), default="")  # '' for vxlan
    segmentation_id: Mapped[int] = mapped_column(Integer)
    provider: Mapped[bool] = mapped_column(Boolean, default=False)  # asked for its id explicitly
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
