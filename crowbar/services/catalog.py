"""Barclamps and roles: import, list, show."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.barclamps import builtin_paths, loader
from crowbar.db.models import Attrib, Barclamp, Role
from crowbar.errors import CrowbarError
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
           "conflicts": role.conflicts, "description": role.description}
    if attribs is not None:
        out["template"] = role.template
        out["scripts"] = [s["name"] for s in role.scripts or []]
        out["attribs"] = [{"name": a.name, "map": a.map, "default": a.default, "schema": a.schema} for a in attribs]
    return out


def import_barclamp(session: Session, path: str | Path, actor: str = "system", source: str | None = None) -> dict:
    """Load a barclamp directory. `source` names where its files came from when `path` is only a
    temporary copy (an upload): errors and the stored source_path then name the user's directory."""
    try:
        bc = loader.read(path)
        if source:
            bc.path = Path(source)
        return barclamp_dict(loader.load(session, bc, actor), full=True)
    except CrowbarError as exc:
        if source:
            exc.message = exc.message.replace(str(Path(path)), source.rstrip("/"))
            exc.args = (exc.message,)
        raise


def import_builtin(session: Session) -> list[str]:
    return [loader.load(session, loader.read(p)).name for p in builtin_paths()]


def list_barclamps(session: Session) -> list[dict]:
    return [barclamp_dict(b) for b in session.scalars(select(Barclamp).order_by(Barclamp.name))]


def show_barclamp(session: Session, key) -> dict:
    return barclamp_dict(lookup.barclamp(session, key), full=True)


def list_roles(session: Session, barclamp: str | None = None) -> list[dict]:
    q = select(Role).order_by(Role.id)
    if barclamp:
        q = q.where(Role.barclamp_id == lookup.barclamp(session, barclamp).id)
    return [role_dict(r) for r in session.scalars(q)]


def show_role(session: Session, key) -> dict:
    role = lookup.role(session, key)
    attribs = list(session.scalars(select(Attrib).where(Attrib.role_id == role.id).order_by(Attrib.name)))
    return role_dict(role, attribs)
