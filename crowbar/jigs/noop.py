"""The noop jig: succeeds at once. Milestone roles and benchmarks use it."""

from crowbar.jigs.base import Jig, RunContext, RunResult


class NoopJig(Jig):
    name = "noop"

    def run(self, ctx: RunContext) -> RunResult:
        return RunResult(ok=True)
