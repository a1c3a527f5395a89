"""The OS catalog: what can be built (recipes), what is built (the image store), which nodes run what.

Images are built on the admin host (`crowbar os build`, crowbar.provisioner.osimage) into the store
the server serves; this module reads the store and the nodes. Deleting an OS's images is refused
while a node is being installed with it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Node
from crowbar.errors import Conflict, NotFound
from crowbar.provisioner import lifecycle, osimage

INSTALLING = (lifecycle.HARDWARE_INSTALLING, lifecycle.HARDWARE_INSTALLED, lifecycle.INSTALLING,
              lifecycle.REINSTALL)


def _image_dict(image: osimage.OsImage, full: bool = False) -> dict:
    m = image.manifest
    out = {"digest": image.digest, "version": m.get("version"), "arch": m.get("arch"), "kernel": m.get("kernel"),
           "size": m.get("size"), "sha256": m.get("sha256"), "built_at": m.get("built_at"),
           "build_seconds": m.get("build_seconds"),
           "url": f"/boot/os/{image.name}/{image.digest}/{image.path.name}"}
    if full:
        out["packages"] = m.get("packages", [])
        out["mirror"] = m.get("mirror")
        out["fs_uuid"] = m.get("fs_uuid")
    return out


def _running(session: Session) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, os_name, state in session.execute(select(Node.name, Node.os, Node.state)
                                                .where(Node.os.is_not(None)).order_by(Node.id)):
        out.setdefault(os_name, []).append({"node": name, "state": state})
    return out


def catalog(session: Session, store: Path | None) -> list[dict]:
    """Every OS known to the catalog or the store: recipe, built images, nodes running it."""
    recipes = osimage.recipes()
    images = osimage.built(store) if store else []
    running = _running(session)
    names = sorted(set(recipes) | {i.name for i in images} | set(running))
    out = []
    for name in names:
        recipe = recipes.get(name)
        built = [i for i in images if i.name == name]
        out.append({"name": name, "title": recipe.title if recipe else name,
                    "buildable": recipe is not None, "built": bool(built),
                    "current": _image_dict(built[-1]) if built else None,
                    "images": len(built), "nodes": running.get(name, [])})
    return out


def show(session: Session, store: Path | None, name: str) -> dict:
    recipes = osimage.recipes()
    images = [i for i in (osimage.built(store, name) if store else []) if i.name == name]
    if name not in recipes and not images:
        raise NotFound(f"no OS {name!r} in the catalog or the image store", field="os")
    recipe = recipes.get(name)
    return {"name": name, "recipe": recipe.as_dict() if recipe else None,
            "images": [_image_dict(i, full=(i is images[-1])) for i in images],
            "nodes": _running(session).get(name, [])}


def delete(session: Session, store: Path | None, name: str) -> dict:
    busy = session.scalars(select(Node.name).where(Node.os == name, Node.state.in_(INSTALLING))).all()
    if busy:
        raise Conflict(f"OS {name!r} is being installed on {', '.join(busy)}: delete its images when they are done",
                       field="os")
    images = [i for i in (osimage.built(store, name) if store else []) if i.name == name]
    if not images:
        raise NotFound(f"OS {name!r} has no built image", field="os")
    return {"name": name, "deleted": osimage.delete(store, name)}
