"""The ground every module of the network service stands on: table handles, the settings row,
the retry budget and the row locks.

Tables are used through Core, never as ORM objects, so the service always sees the rows as the
database holds them (never a stale identity map):
- `SETTINGS`: one row, id `SETTINGS_ID`: the template's global fields, its version token (a new
  random token on every change of the template), the Neutron settings and the release epoch;
- `NETS`, `RANGES`: the template's networks and their named ranges (with the allocator's cursors);
- `ALLOCS`: IP allocations; UNIQUE(network_id, address) and UNIQUE(network_id, node_id);
- `SEGMENTS`: Neutron segments; UNIQUE(network_type, physical_network, segmentation_id).

Locking protocol. SQLite needs no row locks: every transaction there begins with BEGIN IMMEDIATE
(crowbar.db.session), so whoever writes is the only writer until it commits. PostgreSQL (READ
COMMITTED) takes row locks with SELECT ... FOR UPDATE, always network rows in ascending id order,
so that two lockers never deadlock:
- a change of the template or of the Neutron settings: `lock_template` (the settings row, then
  every network row);
- an allocation: `lock_networks` (the rows of the networks whose addresses can collide).
A template change therefore waits for the allocations in flight, and they for it.
"""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.network_models import (
    NetworkAllocation, NetworkRange, NetworkRow, NetworkSettings, NeutronSegment,
)
from crowbar.db.sql import is_postgresql

SETTINGS_ID = 1
RETRIES = 50  # attempts when a UNIQUE constraint says a concurrent writer took what we chose

NETS = NetworkRow.__table__
RANGES = NetworkRange.__table__
ALLOCS = NetworkAllocation.__table__
SEGMENTS = NeutronSegment.__table__
SETTINGS = NetworkSettings.__table__


def lock_networks(session: Session, ids: Iterable[int]) -> None:
    """PostgreSQL: lock these network rows until the transaction ends, in id order (no deadlock).
    SQLite needs nothing: each transaction began with BEGIN IMMEDIATE, so it is the only writer."""
    ids = sorted(set(ids))
    if ids and is_postgresql(session):
        session.execute(select(NETS.c.id).where(NETS.c.id.in_(ids)).order_by(NETS.c.id)
                        .with_for_update())


def lock_template(session: Session) -> None:
    """Before changing the template: the settings row, then every network row, in id order."""
    if is_postgresql(session):
        session.execute(select(SETTINGS.c.id).where(SETTINGS.c.id == SETTINGS_ID).with_for_update())
        session.execute(select(NETS.c.id).order_by(NETS.c.id).with_for_update())
