"""The test jig, after Crowbar 2's: sleeps `test/delay` seconds and echoes its input to the wall.

`test/lines` N streams N lines to the run's log over the delay (ctx.output), the way a jig that
prints as it works does. Role `test-fails` always fails; `test-async` completes from another
thread after the delay, the way a jig that hands work to an external system would.
"""

from __future__ import annotations

import threading
import time

from crowbar.jigs.base import Jig, RunContext, RunResult


class TestJig(Jig):
    name = "test"
    __test__ = False  # not a pytest class

    def run(self, ctx: RunContext) -> RunResult | None:
        test = ctx.attrs.get("test") or {}
        delay = float(test.get("delay", 0) or 0)
        wall = {"test": {"ran_on": ctx.node.name, "role": ctx.role, "marker": test.get("marker"),
                         "seen": {k: v for k, v in test.items() if k != "delay"}}}
        if ctx.role == "test-async":
            def later() -> None:
                time.sleep(delay)
                ctx.complete(RunResult(ok=True, wall=wall, log=f"{ctx.role}: completed asynchronously\n"))

            threading.Thread(target=later, name=f"test-async-{ctx.run_id}", daemon=True).start()
            return None
        lines, streamed = int(test.get("lines", 0) or 0), ""
        for i in range(lines):
            line = f"{ctx.role}: line {i + 1} of {lines}\n"
            streamed += line
            ctx.output(line)
            time.sleep(delay / lines)
        if delay and not lines:
            time.sleep(delay)
        if ctx.role == "test-fails" or test.get("fail"):
            return RunResult(ok=False, log=f"{streamed}{ctx.role}: failing on purpose (test jig)\n")
        return RunResult(ok=True, wall=wall, log=f"{streamed}{ctx.role} on {ctx.node.name}: ok after {delay}s\n")
