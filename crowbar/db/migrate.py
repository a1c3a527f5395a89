"""Run Alembic migrations programmatically: `crowbar db upgrade` and server start call this.

A database that cannot be migrated (a revision this code does not know, a statement the database
refuses) raises UnusableDatabase with one line that says why; the migrations run in one
transaction on both engines, so a refused one leaves the schema as it was.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from crowbar.db.session import UnusableDatabase, reason, shown

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(engine), revision)
    except CommandError as exc:  # e.g. a revision only a newer Crowbar knows
        raise UnusableDatabase(f"cannot migrate the database {shown(engine.url)}: {' '.join(str(exc).split())} "
                               f"(this Crowbar's newest revision is {head_revision()})") from None
    except DBAPIError as exc:
        raise UnusableDatabase(f"cannot migrate the database {shown(engine.url)}: {reason(exc)}") from None


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise UnusableDatabase(f"cannot open the database {shown(engine.url)}: {reason(exc)}") from None


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()
