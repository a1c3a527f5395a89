"""`crowbar db backup` / `restore` on both engines, for real: SQLite's online backup API while a
connection is open, pg_dump and pg_restore against the throwaway PostgreSQL cluster."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from crowbar.cli import main
from crowbar.cli.client import CliError
from crowbar.db.backup import BackupError, backup, restore
from crowbar.db.models import Node, Server, utcnow
from crowbar.services import nodes


def names(db) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(Node.name)))


def test_backup_then_restore_brings_back_the_data(db, tmp_path):
    with db.session() as s:
        nodes.create_node(s, "kept.example.com")
    target = tmp_path / "crowbar.backup"
    with db.session():  # an open session: the backup runs beside the server's connections
        size = backup(db, target)
    assert size == target.stat().st_size > 0 and os.stat(target).st_mode & 0o777 == 0o600
    with db.session() as s:
        nodes.create_node(s, "later.example.com")
        nodes.delete_node(s, "kept.example.com")
    assert names(db) == ["later.example.com"]
    revision = restore(db, target)
    assert names(db) == ["kept.example.com"] and revision is not None
    with db.session() as s:  # the restored database is usable
        nodes.create_node(s, "after.example.com")
    assert names(db) == ["after.example.com", "kept.example.com"]


def test_restore_refuses_what_is_not_a_backup_and_a_running_server(db, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a backup at all")
    with pytest.raises(BackupError, match="not a Crowbar backup"):
        restore(db, junk)
    with pytest.raises(BackupError, match="No such file|no such file"):
        restore(db, tmp_path / "missing")
    other = tmp_path / "other"
    other.write_bytes(b"PGDMP" if db.engine.dialect.name == "sqlite" else b"SQLite format 3\x00" + b"\0" * 100)
    with pytest.raises(BackupError, match="backup and the database is"):
        restore(db, other)
    target = tmp_path / "b"
    backup(db, target)
    with db.session() as s:
        s.add(Server(hostname="elsewhere", pid=1, heartbeat_at=utcnow()))
    with pytest.raises(BackupError, match="a server is using this database"):
        restore(db, target)
    with db.session() as s:
        s.execute(update(Server).values(stopped=True))
    restore(db, target)
    with pytest.raises(BackupError, match="is a directory"):
        backup(db, tmp_path)


def test_the_cli_backs_up_and_restores(db, tmp_path):
    url = db.engine.url.render_as_string(hide_password=False)
    with db.session() as s:
        nodes.create_node(s, "cli.example.com")
    file = tmp_path / "cli.backup"
    result = CliRunner().invoke(main.cli, ["db", "backup", str(file), "--database", url], catch_exceptions=False)
    assert result.exit_code == 0 and "backed up to" in result.output, result.output
    assert url.split("@")[0] not in result.output or "://" not in result.output  # no URL, no password
    with db.session() as s:
        nodes.delete_node(s, "cli.example.com")
    result = CliRunner().invoke(main.cli, ["db", "restore", str(file), "--database", url, "--yes"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "restored" in result.output, result.output
    assert names(db) == ["cli.example.com"]
    refused = CliRunner().invoke(main.cli, ["db", "restore", str(tmp_path), "--database", url, "--yes"])
    assert isinstance(refused.exception, CliError)
