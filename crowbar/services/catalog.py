"""Barclamps and roles: import, list, show.

An import reads and checks the barclamp (crowbar/barclamps/loader.py, pure) against what the other
barclamps in the database provide, then writes it: all checks come before the first write, and the
writes happen within the caller's unit of work, so an import loads the whole barclamp or nothing.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crowbar.barclamps import builtin_paths, loader
from crowbar.db.events import record
from crowbar.db.models import Attrib, Barclamp, NodeRole, Role
from crowbar.db.sql import keyset
from crowbar.errors import Conflict, InvalidInput
from crowbar.services import lookup


def barclamp_dict(bc: Barclamp, full: bool = False) -> dict:
    out = {"id": bc.id, "name": bc.name, "description": bc.description, "version": bc.version,
           "roles": [r.name for r in bc.roles]}
    if full:
        out["source_path"] = bc.source_path
    return out


def role_dict(role: Role, attribs: list[Attrib] | None = None) -> dict:
    out = {"id": role.id, "name": role.name, "barclamp": role.barclamp.name, "jig": role.jig,
           "requires": role.requires, "flags": role.flags, "wants_attribs": role.wants_attribs,
           "conflicts": role.conflicts, "reruns_on_networks": role.reruns_on_networks or {},
           "description": role.description}
    if attribs is not None:
        out["template"] = role.template
        out["scripts"] = [s["name"] for s in role.scripts or []]
        out["attribs"] = [{"name": a.name, "map": a.map, "default": a.default, "schema": a.schema} for a in attribs]
    return out


def import_barclamp(session: Session, path: str | Path, actor: str = "system") -> dict:
    """Load the barclamp directory `path` (or its barclamp.yml) on this server."""
    return barclamp_dict(load(session, loader.read(path), actor), full=True)


def import_path_or_files(session: Session, path: str | None = None, files: dict[str, str] | None = None,
                         source: str | None = None, actor: str = "system") -> dict:
    """Load a barclamp from a directory on the server (`path`), or from its files sent by a client
    (relative path -> text, checked and parsed in memory: nothing is written to disk; `source` names
    the client's directory in errors and as source_path)."""
    if not files:
        if not path:
            raise InvalidInput("give either path or files", field="path")
        return import_barclamp(session, path, actor=actor)
    return barclamp_dict(load(session, loader.read_files(files, source), actor), full=True)


def import_builtin(session: Session) -> list[str]:
    return [load(session, loader.read(p)).name for p in builtin_paths()]


def load(session: Session, bc: loader.BarclampDef, actor: str = "system") -> Barclamp:
    """Create or update a barclamp and its roles and attribs from its description, once every check
    has passed (see the module docstring)."""
    path = bc.path / "barclamp.yml"
    others = session.execute(select(Role.name, Barclamp.name, Role.requires).join(Barclamp)
                             .where(Barclamp.name != bc.name))
    loader.check_against(
        bc, {role: loader.ProvidedRole(barclamp, list(requires or [])) for role, barclamp, requires in others},
        set(session.scalars(select(Attrib.name).join(Barclamp).where(Barclamp.name != bc.name))))
    row = session.scalar(select(Barclamp).where(Barclamp.name == bc.name))
    existing = {r.name: r for r in session.scalars(select(Role).where(Role.barclamp_id == row.id))} if row else {}
    gone = sorted(set(existing) - {r.name for r in bc.roles})
    for name in gone:
        used = session.scalar(select(func.count()).select_from(NodeRole).where(NodeRole.role_id == existing[name].id))
        if used:
            raise Conflict(f"{path}: role {name!r} was removed from the barclamp but {used} noderoles use it")

    created = row is None
    if created:
        row = Barclamp(name=bc.name)
        session.add(row)
    row.description, row.version, row.source_path = bc.description, bc.version, str(bc.path)
    for name in gone:
        session.delete(existing[name])
    session.flush()
    roles: dict[str, Role] = {}
    for r in bc.roles:
        role = existing.get(r.name) or Role(barclamp_id=row.id, name=r.name)
        role.description, role.jig, role.requires, role.flags = r.description, r.jig, r.requires, r.flags
        role.wants_attribs, role.conflicts, role.template, role.scripts = r.wants_attribs, r.conflicts, r.template, r.scripts
        role.reruns_on_networks = r.reruns_on_networks
        session.add(role)
        roles[r.name] = role
    session.flush()
    old_attribs = {a.name: a for a in session.scalars(select(Attrib).where(Attrib.barclamp_id == row.id))}
    wanted = [(a, None) for a in bc.attribs] + [(a, roles[r.name].id) for r in bc.roles for a in r.attribs]
    for a, role_id in wanted:
        attrib = old_attribs.pop(a.name, None) or Attrib(barclamp_id=row.id, name=a.name)
        attrib.role_id, attrib.map, attrib.default, attrib.schema = role_id, a.map, a.default, a.schema
        attrib.description = a.description
        session.add(attrib)
    for stale in old_attribs.values():
        session.delete(stale)
    session.flush()
    record(session, [{"object_type": "barclamp", "object_id": row.id, "action": "import" if created else "update",
                      "actor": actor, "message": f"{bc.name} {bc.version} from {path} ({len(bc.roles)} roles)"}])
    return row


def list_barclamps(session: Session, *, name: str | None = None, limit: int | None = None,
                   marker: int | None = None) -> list[dict]:
    """Barclamps in id order: `limit` of them after id `marker` (all without), whose name starts
    with `name`."""
    q = select(Barclamp)
    if name:
        q = q.where(Barclamp.name.startswith(name, autoescape=True))
    return [barclamp_dict(b) for b in session.scalars(keyset(q, Barclamp.id, limit, marker))]


def show_barclamp(session: Session, key) -> dict:
    return barclamp_dict(lookup.barclamp(session, key), full=True)


def list_roles(session: Session, barclamp: str | None = None, *, name: str | None = None,
               limit: int | None = None, marker: int | None = None) -> list[dict]:
    """Roles in id order: `limit` of them after id `marker` (all without), of `barclamp`, whose
    name starts with `name`."""
    q = select(Role)
    if barclamp:
        q = q.where(Role.barclamp_id == lookup.barclamp(session, barclamp).id)
    if name:
        q = q.where(Role.name.startswith(name, autoescape=True))
    return [role_dict(r) for r in session.scalars(keyset(q, Role.id, limit, marker))]


def show_role(session: Session, key) -> dict:
    role = lookup.role(session, key)
    attribs = list(session.scalars(select(Attrib).where(Attrib.role_id == role.id).order_by(Attrib.name)))
    return role_dict(role, attribs)
