"""`crowbar db backup FILE` and `crowbar db restore FILE`: a consistent copy of the whole database.

SQLite: the online backup API (`sqlite3.Connection.backup`) copies the database page by page
while the server keeps running; the copy is itself a SQLite file. PostgreSQL: `pg_dump
--format=custom` (a consistent snapshot, also while the server runs), restored with `pg_restore
--clean --single-transaction` (all or nothing). The password of a PostgreSQL URL goes to the tools
in PGPASSWORD, never on their command line; a backup holds token hashes, so it is written 0600.

A restore replaces everything in the database, then migrates it to this Crowbar's schema (a backup
from an older Crowbar is upgraded; one from a newer Crowbar is refused by the migration). Restore
into a database no server is using: `restore` refuses while a server's heartbeat is recent.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from crowbar.db import migrate
from crowbar.db.models import Server, utcnow
from crowbar.db.session import Database, UnusableDatabase, reason

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_MAGIC = b"PGDMP"
LIVE = timedelta(seconds=30)  # a server whose heartbeat is younger is taken to be running


class BackupError(Exception):
    """One line that says why a backup or restore could not be made."""


def _kind(db: Database) -> str:
    return db.engine.dialect.name


def _pg_env_and_url(db: Database) -> tuple[dict, str]:
    url = make_url(db.engine.url.render_as_string(hide_password=False))
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return env, plain


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _run(argv: list[str], env: dict) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise BackupError(f"{Path(argv[0]).name} failed: {' '.join(lines[-3:]) or f'exit {proc.returncode}'}")


def backup(db: Database, target: Path) -> int:
    """Write a backup of `db` to `target` (replaced whole, never left half-written); its size."""
    target = Path(target)
    if target.is_dir():
        raise BackupError(f"{target} is a directory: give a file name")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} does not exist")
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    os.chmod(temp, 0o600)
    try:
        if _kind(db) == "sqlite":
            source = sqlite3.connect(db.engine.url.database, timeout=60)
            copy = sqlite3.connect(temp)
            try:
                source.backup(copy)
            finally:
                copy.close()
                source.close()
        else:
            env, url = _pg_env_and_url(db)
            _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", temp,
                  "--dbname", url], env)
        os.replace(temp, target)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up the SQLite database: {exc}") from None
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return target.stat().st_size


def running_servers(db: Database) -> list[str]:
    """hostname:pid of the servers whose heartbeat is recent (they may be using the database)."""
    try:
        with db.session() as s:
            rows = s.execute(select(Server.hostname, Server.pid, Server.heartbeat_at)
                             .where(Server.stopped.is_(False))).all()
    except DBAPIError:  # an empty database has no servers table yet
        return []
    now = utcnow()
    return [f"{host}:{pid}" for host, pid, beat in rows if now - beat < LIVE]


def restore(db: Database, source: Path, *, force: bool = False) -> str | None:
    """Replace the contents of `db` with the backup at `source`, then migrate it; the schema
    revision it has now."""
    source = Path(source)
    try:
        with open(source, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise BackupError(f"{source}: {exc.strerror or exc}") from None
    kind = "sqlite" if head.startswith(SQLITE_MAGIC) else "postgresql" if head.startswith(PG_MAGIC) else None
    if kind is None:
        raise BackupError(f"{source} is not a Crowbar backup (neither a SQLite file nor a pg_dump archive)")
    if kind != _kind(db):
        raise BackupError(f"{source} is a {kind} backup and the database is {_kind(db)}: restore it into a "
                          f"{kind} database")
    busy = running_servers(db)
    if busy and not force:
        raise BackupError(f"a server is using this database ({', '.join(busy)}): stop it first (or --force)")
    db.dispose()
    if kind == "sqlite":
        try:
            backup_db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            check = backup_db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"{source} is damaged: {check}")
            live = sqlite3.connect(db.engine.url.database, timeout=60)
            try:
                backup_db.backup(live)
            finally:
                live.close()
                backup_db.close()
        except sqlite3.Error as exc:
            raise BackupError(f"cannot restore {source}: {exc}") from None
    else:
        env, url = _pg_env_and_url(db)
        _run([_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges",
              "--single-transaction", "--exit-on-error", "--dbname", url, str(source)], env)
    try:
        migrate.upgrade(db.engine)
        return migrate.current_revision(db.engine)
    except DBAPIError as exc:
        raise UnusableDatabase(f"the restored database cannot be opened: {reason(exc)}") from None
