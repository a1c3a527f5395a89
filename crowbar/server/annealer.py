"""The annealer loop: the thread that drives `crowbar.engine.annealer.Annealer` (the claim / run /
apply / recover protocol lives there). Finished runs and queued agent jobs wake it at once."""

from __future__ import annotations

from crowbar.documents import merge
from crowbar.engine.annealer import Annealer
from crowbar.server.loop import Loop
from crowbar.services import openstack, proxy, sources


def source_preparer(proxies):
    """The annealer's `prepare` hook: a role's `source` resolved through this server's git mirror,
    with its PyPI index (services/proxy.py, docs/install-from-source.md). Without proxies (None: no
    `--proxies`), a run that names a source fails saying that this server runs none."""
    return sources.preparer(lambda url, ref: proxy.mirror_git(proxies, url, ref),
                            lambda: proxy.pip_index_url(proxies))


def chain(*preparers):
    """One `prepare` hook of several, called in order on the same run: their walls merge (a later
    one's over an earlier one's) and their notes are joined; None when none had anything to say."""
    def prepare(ctx):
        wall, notes = {}, []
        for each in preparers:
            got = each(ctx)
            if got:
                merge(wall, got[0] or {})
                notes.append(got[1])
        return (wall, "".join(notes)) if notes else None

    return prepare


def server_preparer(proxies, db, secret: bytes):
    """The server's `prepare` hook: sources resolved (source_preparer), then the OpenStack roles'
    attributes from the network model (services/openstack.py), with passwords derived from `secret`."""
    return chain(source_preparer(proxies), openstack.preparer(db, secret))


class Applier(Loop):
    """The annealer's second thread: applies finished runs (`Annealer.apply`) while the loop's own
    thread claims, so that their round trips to the database overlap. Each step waits up to
    `interval` seconds for a run to finish."""
    name = "annealer-apply"
    interval = 0.5

    def __init__(self, annealer: Annealer, wake):
        super().__init__()
        self.annealer, self.wake_claims = annealer, wake

    def step(self) -> bool:
        if self.annealer.apply(block=self.interval):
            self.wake_claims()  # children may be runnable, and the backlog has room
        return not self.stopping


class AnnealerLoop(Loop):
    """Claims work in its thread and applies finished runs in its Applier's (`pipelined`, the
    server's way on PostgreSQL), or does both in turn in one thread (`Annealer.step`, as
    `run_until_idle` does: on SQLite, whose one writer would only make the two threads wait for
    each other). Woken by finished runs, applies and queued agent jobs.

    Pipelined, one server's anneal of 10,000 nodes x 6 roles on PostgreSQL took 29.8-29.9 s against
    32.4-33.4 s (docs/benchmarks.md, "Several servers on one PostgreSQL"): its claims and applies
    had been round trips in series, PostgreSQL and the server each idle while the other worked."""
    name = "annealer"
    interval = 0.5

    def __init__(self, annealer: Annealer, interval: float | None = None, pipelined: bool = False):
        super().__init__(interval)
        self.annealer = annealer
        annealer.notify = self.wake
        self.applier = Applier(annealer, self.wake) if pipelined else None

    def open(self) -> None:
        if self.annealer.server_id is None:
            self.annealer.register()

    def start(self) -> None:
        super().start()
        if self.applier is not None:
            self.applier.start()

    def step(self) -> bool:
        if self.applier is None:
            return self.annealer.step()
        return bool(self.annealer.claim_step())

    def stop(self, timeout: float = 30.0) -> None:
        if self.applier is not None:
            self.applier.stop(timeout)  # what finishes after this is applied by close()
        super().stop(timeout)

    def health(self) -> dict:
        own = super().health()
        if own["ok"] and self.applier is not None:
            applier = self.applier.health()
            if not applier["ok"]:
                return {"ok": False, "detail": f"applying finished runs: {applier['detail']}"}
        return own

    def close(self) -> None:
        # Running jigs get a few seconds to finish; what is left goes back to todo.
        self.annealer.close()
