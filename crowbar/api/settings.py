"""What the application is built with (plan.md's agreed interface; the api branch owns this file)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crowbar.config import DEFAULT_DOMAIN
from crowbar.db.session import Database


def _no_wake(kind: str) -> None:
    """Nothing to wake (tests, tools): work is found by the loops' own polling."""


@dataclass(frozen=True)
class AppSettings:
    db: Database
    domain: str = DEFAULT_DOMAIN
    advertise_url: str | None = None
    discovery_image: object | None = None   # has .kernel and .initrd paths
    wake: Callable[[str], None] = _no_wake  # kind: "anneal" | "power"
