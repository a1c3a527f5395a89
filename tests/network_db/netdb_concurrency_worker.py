"""One competitor of the concurrency tests, run as its own process:

    python netdb_concurrency_worker.py '{"url": ..., "dir": ..., "index": i, "rounds": [op, op, ...]}'

It connects, says it is ready (creates `ready-<i>`), then for each round k waits for `go-<k>` to
exist, so that every competitor starts that round at the same moment, runs the round's one
operation in one transaction, and writes `result-<i>-<k>.json`: {"ok": result} or
{"error": kind, "class": name, "message": text}. Paying for the interpreter's start-up once for
several rounds keeps the test short on a 2-core machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    spec = json.loads(sys.argv[1])
    from crowbar.db.session import Database
    from crowbar.errors import CrowbarError
    from crowbar.services import network

    folder, index = Path(spec["dir"]), spec["index"]
    db = Database(spec["url"])
    with db.engine.connect():  # connect before the start line, not after it
        pass
    (folder / f"ready-{index}").touch()
    for k, op in enumerate(spec["rounds"]):
        go, deadline = folder / f"go-{k}", time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"never told to start round {k}")
            time.sleep(0.001)
        try:
            with db.session() as s:
                if op["op"] == "allocate":
                    out = network.allocate(s, op["network"], op["node"], address=op.get("address"))
                elif op["op"] == "tenant":
                    out = network.create_tenant_network(s, op["name"], op.get("network_type", "vlan"))
                else:
                    raise SystemExit(f"unknown op {op['op']}")
            result = {"ok": out}
        except CrowbarError as exc:
            result = {"error": exc.kind, "class": type(exc).__name__, "message": exc.message}
        tmp = folder / f"result-{index}-{k}.tmp"
        tmp.write_text(json.dumps(result))
        tmp.rename(folder / f"result-{index}-{k}.json")
    db.dispose()


if __name__ == "__main__":
    main()
