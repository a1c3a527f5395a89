"""Fixtures for the engine tests: small barclamps written to a tmp dir, and annealers that are cleaned up."""

from __future__ import annotations

import textwrap

import pytest

from crowbar.engine.annealer import Annealer
from crowbar.services import catalog


@pytest.fixture
def import_yaml(db, tmp_path):
    """import_yaml(text) writes a barclamp.yml in a fresh directory and imports it into `db`."""
    counter = iter(range(1000))

    def load(text: str) -> dict:
        d = tmp_path / f"barclamp-{next(counter)}"
        d.mkdir()
        (d / "barclamp.yml").write_text(textwrap.dedent(text))
        with db.session() as s:
            return catalog.import_barclamp(s, d)

    return load


@pytest.fixture
def annealer(db):
    """A fresh Annealer on `db`; `annealer.run_until_idle()` anneals to idle. Its pool is shut down after."""
    made: list[Annealer] = []

    class Factory:
        def __call__(self, **kwargs) -> Annealer:
            a = Annealer(db, **({"workers": 4} | kwargs))
            made.append(a)
            return a

        def run_until_idle(self, timeout: float = 30, **kwargs) -> Annealer:
            a = self(**kwargs)
            a.run_until_idle(timeout)
            return a

    yield Factory()
    for a in made:
        a._pool.shutdown(wait=True)
