"""services/lookup.lock_nodes: the row locks of several nodes, taken in the order of their ids
(PostgreSQL; SQLite's units of work hold its one write lock), with the rows read again."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from crowbar.db.models import Node
from crowbar.services import lookup, nodes


@pytest.mark.postgresql
def test_locked_nodes_are_read_again_and_held_until_the_end_of_the_unit(pg):
    with pg.session() as s:
        ids = sorted(n.id for n in nodes.add_nodes(s, [{"name": f"lock{i}.example.com"} for i in range(3)]))

    a = pg.sessionmaker()
    try:
        seen = a.get(Node, ids[0])
        assert seen.description in (None, "")
        with pg.session() as b:  # another unit commits a change after `a` read the node
            b.get(Node, ids[0]).description = "changed meanwhile"
        lookup.lock_nodes(a, [ids[2], ids[0]])
        assert seen.description == "changed meanwhile"  # read again under the lock
        with pg.engine.connect() as c:  # held: another transaction cannot take them
            for node_id in (ids[0], ids[2]):
                with pytest.raises(OperationalError, match="could not obtain lock"):
                    with c.begin():
                        c.execute(text("SELECT id FROM nodes WHERE id = :i FOR UPDATE NOWAIT"), {"i": node_id})
            with c.begin():  # the one not named is free
                assert c.execute(text("SELECT id FROM nodes WHERE id = :i FOR UPDATE NOWAIT"),
                                 {"i": ids[1]}).scalar() == ids[1]
            with c.begin():  # and a row that refers to a locked node may still be inserted (key share)
                c.execute(text("SELECT id FROM nodes WHERE id = :i FOR KEY SHARE NOWAIT"), {"i": ids[0]})
    finally:
        a.rollback()
        a.close()
