"""The one small interface every jig implements, and the registry that finds jigs by name."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crowbar import plugins
from crowbar.documents import dig


@dataclass(frozen=True)
class NodeInfo:
    """What a jig may know of the node it runs on (a snapshot, not a database object)."""

    id: int
    name: str
    admin: bool
    attrs: dict = field(default_factory=dict)  # discovery data overlaid with hints (engine.attribs.node_attrs)
    # its sshd's public host keys as the installed system reported them at its last boot (`install.
    # host_keys`); SSH to the node checks them strictly (transport.SshTarget)
    host_keys: tuple[str, ...] = ()

    def attr(self, path: str, default=None):
        return dig(self.attrs, path, default)


@dataclass
class RunResult:
    ok: bool
    wall: dict = field(default_factory=dict)
    log: str = ""


@dataclass
class RunContext:
    """Everything one run needs; built by the annealer when it claims the noderole."""

    run_id: int
    noderole_id: int
    node: NodeInfo
    role: str
    jig: str
    attrs: dict                     # the merged attribute document (see docs/attributes.md)
    scripts: list[dict]             # [{"name": ..., "content": ...}] in run order (script jig)
    workdir: Path                   # private scratch directory, removed after the run
    complete: Callable[[RunResult], None] = lambda _result: None  # for asynchronous jigs
    agent: AgentChannel | None = None  # set when the node runs the discovery agent (no SSH needed)
    deployment_id: int = 0          # the noderole's deployment (batches never mix deployments)
    groups: list[str] = field(default_factory=list)  # the roles the node holds there (jigs with wants_groups)
    # Appends text to the run's log while it runs (`crowbar noderoles log ID` shows it at once); the
    # RunResult's log replaces it all when the run completes. Callable from any thread.
    output: Callable[[str], None] = lambda _text: None
    # The noderole's wall before this run (what its last successful run returned).
    wall: dict = field(default_factory=dict)


class AgentChannel(abc.ABC):
    """Hands a shell script to the node's discovery agent; `on_done(exit_code, output)` is called
    (from the annealer's thread) once the agent has reported the result."""

    @abc.abstractmethod
    def submit(self, script: str, timeout: int, on_done: Callable[[int, str], None]) -> None: ...


class Jig(abc.ABC):
    """A configuration back end.

    `run` either returns a RunResult (synchronous), or returns None after arranging for
    `ctx.complete(result)` to be called later from any thread (asynchronous). Raising an exception
    counts as a failed run whose log is the exception text.
    """

    name: str = ""
    # A batching jig is handed every noderole of one role and deployment the annealer claimed
    # together (`run_batch`), so that one tool run can cover many nodes.
    batch: bool = False
    # A jig that reads `ctx.groups` (the roles each node holds in the deployment: an inventory's
    # groups) says so; the annealer reads them for its runs only (a query over every noderole of
    # the claimed nodes).
    wants_groups: bool = False

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> RunResult | None: ...

    def run_batch(self, ctxs: list[RunContext]) -> list[RunResult] | None:
        """Run several noderoles of one role and deployment (on different nodes) together: return
        one RunResult per context, in order, or None after arranging for each `ctx.complete`.
        By default, one `run` after another."""
        out = []
        for ctx in ctxs:
            result = self.run(ctx)
            if result is None:
                raise TypeError(f"jig {self.name}: an asynchronous run can not be part of a default batch")
            out.append(result)
        return out


def jig_names() -> list[str]:
    return plugins.names(plugins.JIGS)


def get_jig(name: str) -> Jig:
    """One shared instance per jig (jigs keep no per-run state); UnknownPlugin (a KeyError) naming
    the known jigs if there is none called `name`."""
    return plugins.get(plugins.JIGS, name)
