"""`crowbar noderoles log ID --follow`: prints a running run's log as it grows, until it ends."""

from __future__ import annotations

import threading
import time

import test_cli_lists
from sqlalchemy import select

from crowbar.db.models import NodeRole, Run, utcnow
from crowbar.services import nodes

cli = test_cli_lists.cli  # the `crowbar ...` in-process fixture


def test_follow_prints_the_log_as_it_grows(cli, db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        nr = s.scalar(select(NodeRole))
        run = Run(node_role_id=nr.id, state="running", log="first\n", attrs={}, started_at=utcnow())
        s.add(run)
        s.flush()
        nr_id, run_id = nr.id, run.id

    def progress():
        time.sleep(1.5)
        with db.session() as s:
            s.get(Run, run_id).log = "first\nsecond\n"
        time.sleep(1.5)
        with db.session() as s:
            row = s.get(Run, run_id)
            row.log, row.state, row.finished_at = "first\nsecond\nthird\n", "succeeded", utcnow()

    worker = threading.Thread(target=progress)
    worker.start()
    try:
        out = cli("noderoles", "log", str(nr_id), "--follow")
    finally:
        worker.join()
    lines = out.splitlines()
    assert lines[0].startswith(f"--- run {run_id} (running")
    assert lines[1:] == ["first", "second", "third"]
