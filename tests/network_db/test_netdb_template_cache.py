"""The template cache (crowbar.services.network.templates.TemplateCache): keyed by the settings
version token, bounded, and never filled with rows that belong to another version."""

from __future__ import annotations

from sqlalchemy import update

from crowbar.db.network_models import NetworkSettings
from crowbar.services import network
from crowbar.services.network import templates
from netdb_helpers import TINY


def test_one_version_is_parsed_once_and_a_change_is_a_miss(db):
    cache = templates.TemplateCache(size=4)
    with db.session() as s:
        first = templates.read_stored(s, cache)
        assert first.version and templates.read_stored(s, cache) is first
    with db.session() as s:
        network.create_network(s, "tiny", TINY)
    with db.session() as s:
        second = templates.read_stored(s, cache)
        assert second.version != first.version and "tiny" in second.template.networks
        assert templates.read_stored(s, cache) is second
    assert cache.get(first.version) is first  # an old version stays correct: tokens are never reused


def test_the_cache_is_bounded():
    cache = templates.TemplateCache(size=2)
    entries = [templates.Stored(None, {}, f"v{i}") for i in range(3)]
    for entry in entries:
        cache.put(entry)
    assert cache.get("v0") is None and cache.get("v2") is entries[2]
    cache.put(templates.Stored(None, {}, None))  # an unversioned read is never cached
    assert cache.get(None) is None


def test_a_load_that_races_a_change_is_returned_but_not_cached(db, monkeypatch):
    """Under READ COMMITTED a change can commit between the version and the rows: such a load
    must not be cached under the version read before it."""
    cache = templates.TemplateCache()
    real = templates._load

    def racing(session, version):
        stored = real(session, version)
        session.execute(update(NetworkSettings.__table__).values(version="changed-meanwhile"))
        return stored

    monkeypatch.setattr(templates, "_load", racing)
    with db.session() as s:
        stored = templates.read_stored(s, cache)
        assert stored.version != "changed-meanwhile"
        assert cache.get(stored.version) is None and cache.get("changed-meanwhile") is None
        s.rollback()
