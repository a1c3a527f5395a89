"""The annealer loop: the thread that drives `crowbar.engine.annealer.Annealer` (the claim / run /
apply / recover protocol lives there). Finished runs and queued agent jobs wake it at once."""

from __future__ import annotations

from crowbar.engine.annealer import Annealer
from crowbar.server.loop import Loop
from crowbar.services import proxy, sources


def source_preparer(proxies):
    """The annealer's `prepare` hook: a role's `source` resolved through this server's git mirror,
    with its PyPI index (services/proxy.py, docs/install-from-source.md). Without proxies (None: no
    `--proxies`), a run that names a source fails saying that this server runs none."""
    return sources.preparer(lambda url, ref: proxy.mirror_git(proxies, url, ref),
                            lambda: proxy.pip_index_url(proxies))


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
