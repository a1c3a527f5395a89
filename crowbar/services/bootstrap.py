"""What a server does to its database before it serves: migrate, system deployment, built-in barclamps."""

from __future__ import annotations

from crowbar.db import migrate
from crowbar.db.session import Database
from crowbar.services import catalog, deployments, network


def prepare(db: Database) -> None:
    migrate.upgrade(db.engine)
    with db.session() as s:
        deployments.ensure_system(s)
        catalog.import_builtin(s)
        network.seed_template(s)
