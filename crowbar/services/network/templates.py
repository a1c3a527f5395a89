"""The network template in the database: reading it (through one explicit cache), storing it,
seeding a fresh database, exporting it, and listing its networks.

The database holds one template (`network_settings` + `networks` + `network_ranges`). A fresh
server's database gets the built-in default, or the template file named by
`CROWBAR_NETWORK_TEMPLATE` (`seed_template`, called once by bootstrap.prepare). `export` writes
it in the format `import_template` (crowbar.services.network.changes) reads: they round-trip.

Protocol:
- read: `read_stored` (or `read_template`, `current_template`) reads the version token, then,
  unless `CACHE` already holds that version, the rows (see `TemplateCache`);
- write: only through `store_template`, which writes a new version token with the rows and keeps
  nova_fixed's provider segment in step (crowbar.services.network._fixed). A change of a stored
  template (crowbar.services.network.changes) locks it first (`_db.lock_template`) and validates
  the whole new template (`validate`: crowbar.network.model.template_problems) before storing it:
  nothing is written when a rule is broken, and `TemplateInvalid` names the network, the field
  and the reason (and lists every other problem). `seed_template` writes only into a database
  that has no template yet, in a savepoint: of two servers seeding at once, the settings row's
  primary key lets one win; the other's savepoint rolls back and it returns None.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import utcnow
from crowbar.documents import check_strict
from crowbar.errors import CrowbarError, InvalidInput, NotFound
from crowbar.network.model import (
    BusOrder, ConduitMapEntry, Network, NetworkTemplate, NetworkValidationError, default_template,
    export_network, export_template, load_template, template_problems,
)
from crowbar.services.network._db import ALLOCS, NETS, RANGES, SETTINGS, SETTINGS_ID
from crowbar.services.network._fixed import sync_fixed_network

ENV_TEMPLATE = "CROWBAR_NETWORK_TEMPLATE"

_Q_VERSION = select(SETTINGS.c.version).where(SETTINGS.c.id == SETTINGS_ID)


# ---------------------------------------------------------------------------------------------
# Errors

class TemplateInvalid(InvalidInput):
    """Every rule a template breaks; the first one is the headline (network, field, reason)."""

    def __init__(self, problems: list[NetworkValidationError]):
        first = problems[0]
        shown = [p.message for p in problems[:10]]  # every problem, in the message the CLI prints
        more = f"; and {len(problems) - 10} more (see problems)" if len(problems) > 10 else ""
        super().__init__("; ".join(shown) + more, field=first.field)
        self.network, self.reason, self.problems = first.network, first.reason, problems

    def to_dict(self) -> dict:
        body = super().to_dict()
        body.update(network=self.network, reason=self.reason,
                    problems=[{"network": p.network, "field": p.field, "reason": p.reason,
                               "message": p.message} for p in self.problems])
        return body


def invalid(exc: NetworkValidationError) -> TemplateInvalid:
    return TemplateInvalid([exc])


# ---------------------------------------------------------------------------------------------
# Reading and storing

@dataclass(frozen=True)
class Stored:
    """The template as stored: parsed, each network's row id, and the version it was read at."""
    template: NetworkTemplate
    ids: Mapping[str, int]  # network name -> row id (read-only)
    version: str | None


class TemplateCache:
    """Parsed templates by version token, so that reading the template costs one indexed SELECT
    (of the version) while it is unchanged, instead of three queries and a parse.

    Key: `network_settings.version`, a random token (uuid4 hex) that `store_template` writes with
    every change of the template, in the same transaction as the rows it describes. A token names
    one template for ever (a counter could repeat after a rolled-back change; a random token
    cannot), so an entry never needs invalidating.
    Size: at most `size` entries; when full it is emptied and refilled (the template changes
    rarely, and in steady state only the current version is read).

    Why one instance may serve every session, thread and process:
    - a reader reads the version in its own transaction and gets the entry of exactly that
      version: the template its transaction sees, whoever loaded it;
    - `read_stored` puts an entry only when the version, read again after the rows, is unchanged,
      so the rows belong to that version even under PostgreSQL's READ COMMITTED (each statement
      sees the latest commit); a change committed in between leaves the load uncached;
    - a version written by a transaction that rolls back is never seen by anyone else: its entry
      is dead weight, never wrong;
    - a process only ever holds what it read; another process's change writes a new token, which
      is a miss here;
    - entries are never changed (frozen `Stored`, read-only ids; templates are frozen dataclasses
      that callers change with dataclasses.replace), and `get` and `put` are single dict
      operations: two threads racing at worst both load the same version, or lose an entry to a
      clear.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: dict[str, Stored] = {}

    def get(self, version: str | None) -> Stored | None:
        return self._entries.get(version) if version else None

    def put(self, stored: Stored) -> None:
        if not stored.version:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[stored.version] = stored

    def clear(self) -> None:
        self._entries.clear()


CACHE = TemplateCache(size=16)  # this process's one template cache


def _load(session: Session, version: str | None) -> Stored:
    settings = session.execute(select(SETTINGS).where(SETTINGS.c.id == SETTINGS_ID)).first()
    rows = session.execute(select(NETS).order_by(NETS.c.position, NETS.c.id)).all()
    ranges: dict[int, dict[str, tuple[str, str]]] = {}
    for r in session.execute(select(RANGES).order_by(RANGES.c.network_id, RANGES.c.position,
                                                     RANGES.c.id)):
        ranges.setdefault(r.network_id, {})[r.name] = (r.first, r.last)
    networks = {}
    for row in rows:
        networks[row.name] = Network(
            name=row.name, subnet=row.subnet, conduit=row.conduit, category=row.category,
            vlan=row.vlan, use_vlan=row.use_vlan, add_bridge=row.add_bridge, mtu=row.mtu,
            router=row.router, router_pref=row.router_pref, team_mode=row.team_mode,
            use_team=row.use_team, ranges=ranges.get(row.id, {}))
    if settings is None:
        template = NetworkTemplate(networks=networks)
    else:
        template = NetworkTemplate(
            mode=settings.mode, teaming_mode=settings.teaming_mode,
            conduit_map=tuple(ConduitMapEntry(e["pattern"], e["conduits"])
                              for e in settings.conduit_map or []),
            interface_map=tuple(BusOrder(e["pattern"], e["bus_order"])
                                for e in settings.interface_map or []),
            networks=networks)
    return Stored(template, MappingProxyType({row.name: row.id for row in rows}), version)


def read_stored(session: Session, cache: TemplateCache = CACHE) -> Stored:
    """The stored template and each network's row id. Read with Core (always the database's
    state, never stale ORM objects); parsed once per version token and process (`cache`)."""
    version = session.connection().execute(_Q_VERSION).scalar()
    stored = cache.get(version)
    if stored is None:
        stored = _load(session, version)
        if version and session.connection().execute(_Q_VERSION).scalar() == version:
            cache.put(stored)
    return stored


def read_template(session: Session) -> tuple[NetworkTemplate, dict[str, int]]:
    stored = read_stored(session)
    return stored.template, dict(stored.ids)


def current_template(session: Session) -> NetworkTemplate:
    return read_template(session)[0]


def _network_values(network: Network, position: int) -> dict:
    return {"position": position, "category": network.category, "subnet": str(network.subnet),
            "vlan": network.vlan, "use_vlan": network.use_vlan, "add_bridge": network.add_bridge,
            "mtu": network.mtu, "conduit": network.conduit,
            "router": str(network.router) if network.router is not None else None,
            "router_pref": network.router_pref, "team_mode": network.team_mode,
            "use_team": network.use_team, "updated_at": utcnow()}


def store_template(session: Session, template: NetworkTemplate, ids: dict[str, int]) -> dict[str, int]:
    """Write `template` over the stored one: rows of kept networks are updated in place (their
    allocations stay), removed ones are deleted (their allocations with them). Returns the ids."""
    exported = export_template(template)
    settings = {"mode": template.mode, "teaming_mode": template.teaming_mode,
                "conduit_map": exported["conduit_map"],
                "interface_map": exported.get("interface_map", []), "updated_at": utcnow(),
                "version": uuid.uuid4().hex}
    if session.execute(select(SETTINGS.c.id).where(SETTINGS.c.id == SETTINGS_ID)).first():
        session.execute(update(SETTINGS).where(SETTINGS.c.id == SETTINGS_ID).values(**settings))
    else:
        session.execute(insert(SETTINGS).values(id=SETTINGS_ID, neutron={}, **settings))
    removed = [ids[name] for name in ids if name not in template.networks]
    if removed:
        session.execute(delete(NETS).where(NETS.c.id.in_(removed)))
    new_ids = {}
    for position, (name, network) in enumerate(template.networks.items()):
        values = _network_values(network, position)
        if name in ids:
            session.execute(update(NETS).where(NETS.c.id == ids[name]).values(**values))
            new_ids[name] = ids[name]
            session.execute(delete(RANGES).where(RANGES.c.network_id == ids[name]))
        else:
            new_ids[name] = session.execute(
                insert(NETS).values(name=name, created_at=utcnow(), **values)).inserted_primary_key[0]
        if network.ranges:
            session.execute(insert(RANGES), [
                {"network_id": new_ids[name], "name": range_name, "position": i,
                 "first": str(span.start), "last": str(span.end)}
                for i, (range_name, span) in enumerate(network.ranges.items())])
    sync_fixed_network(session, template)
    return new_ids


def validate(template: NetworkTemplate) -> None:
    problems = template_problems(template)
    if problems:
        raise TemplateInvalid(problems)


def parse_template(source: Mapping[str, Any] | str) -> NetworkTemplate:
    if isinstance(source, str):
        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"template: not valid YAML or JSON: {exc}".replace("\n", " "),
                               field="template") from None
    check_strict(source, field="template", what="the template")  # YAML: .nan, "\ud800", dates...
    try:
        return load_template(source)
    except NetworkValidationError as exc:
        raise invalid(exc) from None
    except (TypeError, ValueError, AttributeError) as exc:  # a shape the loader did not expect
        raise InvalidInput(f"template: {exc}", field="template") from None


def seed_template(session: Session) -> str | None:
    """Store the built-in default template (or `CROWBAR_NETWORK_TEMPLATE`'s file) in a database
    that has none yet. Returns where it came from, or None when a template was already there."""
    if session.execute(select(SETTINGS.c.id).where(SETTINGS.c.id == SETTINGS_ID)).first():
        return None
    path = os.environ.get(ENV_TEMPLATE)
    if path:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise InvalidInput(f"{ENV_TEMPLATE}={path}: {exc.strerror or exc}", field="template") from None
        try:
            template = parse_template(text)
            validate(template)
        except CrowbarError as exc:
            raise InvalidInput(f"{ENV_TEMPLATE}={path}: {exc.message}", field=exc.field) from None
        source = path
    else:
        template, source = default_template(), "built-in default"
    try:
        with session.begin_nested():
            store_template(session, template, {})
    except IntegrityError:  # another server seeded the same database at the same moment
        return None
    record(session, [{"object_type": "network", "action": "seed",
                      "message": f"network template: {source}"}])
    return source


def export(session: Session) -> dict:
    """The stored template in the format `import_template` reads (round-trips)."""
    return export_template(current_template(session))


# ---------------------------------------------------------------------------------------------
# Listing networks

def _range_dict(span, used: int) -> dict:
    size = int(span.end) - int(span.start) + 1
    return {"start": str(span.start), "end": str(span.end), "size": max(size, 0), "used": used}


def _network_dict(network: Network, network_id: int, allocations: int,
                  range_use: Mapping[str, int] | None = None) -> dict:
    return {"id": network_id, "name": network.name, "category": network.category,
            "subnet": str(network.subnet), "vlan": network.vlan, "use_vlan": network.use_vlan,
            "add_bridge": network.add_bridge, "mtu": network.mtu, "conduit": network.conduit,
            "router": str(network.router) if network.router is not None else None,
            "router_pref": network.router_pref, "team_mode": network.team_mode,
            "use_team": network.use_team,
            "ranges": {name: _range_dict(span, (range_use or {}).get(name, 0))
                       for name, span in network.ranges.items()},
            "allocations": allocations}


def list_networks(session: Session) -> list[dict]:
    """Every network with its allocations counted per range: one GROUP BY over the allocations
    (their `range` column), not a query per network or per range."""
    template, ids = read_template(session)
    use: dict[int, dict[str, int]] = {}
    for network_id, range_name, count in session.execute(
            select(ALLOCS.c.network_id, ALLOCS.c.range, func.count()).group_by(ALLOCS.c.network_id, ALLOCS.c.range)):
        use.setdefault(network_id, {})[range_name] = count
    return [_network_dict(n, ids[name], sum(use.get(ids[name], {}).values()), use.get(ids[name], {}))
            for name, n in template.networks.items()]


def get_network(template: NetworkTemplate, name: str) -> Network:
    network = template.networks.get(name)
    if network is None:
        known = ", ".join(template.networks) or "none"
        raise NotFound(f"network {name!r} does not exist (networks: {known})", field="network")
    return network


def show_network(session: Session, name: str) -> dict:
    template, ids = read_template(session)
    network = get_network(template, name)
    use = dict(session.execute(select(ALLOCS.c.range, func.count())
                               .where(ALLOCS.c.network_id == ids[name])
                               .group_by(ALLOCS.c.range)).all())
    out = _network_dict(network, ids[name], sum(use.values()), use)
    out["template"] = export_network(network)
    return out
