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


class AnnealerLoop(Loop):
    name = "annealer"
    interval = 0.5

    def __init__(self, annealer: Annealer, interval: float | None = None):
        super().__init__(interval)
        self.annealer = annealer
        annealer.notify = self.wake

    def open(self) -> None:
        if self.annealer.server_id is None:
            self.annealer.register()

    def step(self) -> bool:
        return self.annealer.step()

    def close(self) -> None:
        # Running jigs get a few seconds to finish; what is left goes back to todo.
        self.annealer.close()
