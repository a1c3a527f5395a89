"""Fixtures for the networking features that need the database, the API or the CLI.

`db` and `api` come from tests/conftest.py (SQLite and PostgreSQL); every database there was
prepared by bootstrap.prepare, so it holds the built-in default network template.
"""

from __future__ import annotations

import pytest

from netdb_helpers import TINY, add_nodes


@pytest.fixture
def make_nodes(db):
    return lambda *names, **kw: add_nodes(db, *names, **kw)


@pytest.fixture
def tiny(db):
    """The TINY network added to the default template."""
    from crowbar.services import network

    with db.session() as s:
        network.create_network(s, "tiny", TINY)
    return "tiny"
