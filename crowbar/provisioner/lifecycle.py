"""The node lifecycle: which state a node may move to next, what it PXE-boots, when it is stuck.

Everything here is read from three tables (TRANSITIONS, BOOTENVS, TIMEOUTS) so that the checks, the
diagram (`to_dot`) and docs/node-lifecycle.md cannot drift apart. The walk follows Crowbar 1:

    discovering -> discovered -> allocated -> hardware-installing -> hardware-installed
        -> installing -> installed -> readying -> ready

with the operator's ways out (reset, reinstall, delete, release: an allocated node straight back to
discovered, an installed one through `releasing`, where its disks are erased) and `problem`,
which any working state can fall into: reported by the node, or set by a supervisor when a
waiting state outlives its timeout (MAAS and Ironic both learned that an unwatched "deploying"
state is a node lost forever).

A newly discovered machine waits in `pending` instead of `discovered` when the server holds new
machines for the operator's approval (`crowbar server --approve-discovered`, as MAAS's "New"
machines wait to be accepted): nothing runs on it and it cannot be allocated until
`crowbar nodes approve` moves it on to discovered.
"""

from __future__ import annotations

from datetime import timedelta

from crowbar.errors import IllegalTransition, InvalidInput

PENDING = "pending"
DISCOVERING = "discovering"
DISCOVERED = "discovered"
ALLOCATED = "allocated"
HARDWARE_INSTALLING = "hardware-installing"
HARDWARE_INSTALLED = "hardware-installed"
INSTALLING = "installing"
INSTALLED = "installed"
READYING = "readying"
READY = "ready"
PROBLEM = "problem"
RESET = "reset"
REINSTALL = "reinstall"
DELETE = "delete"
RELEASING = "releasing"

# Bootenvs, as the iPXE renderer knows them. An OS install bootenv is "<os>-install".
DISCOVERY = "discovery"
LOCAL = "local"
NONE = "none"
OS_INSTALL = "{os}-install"
DEFAULT_OS = "debian-12"

# States a node record may be created in: discovered when the discovery agent posts its inventory
# (pending instead when new machines wait for the operator's approval), discovering when an
# operator registers a machine (by MAC) before it has booted.
INITIAL = frozenset({PENDING, DISCOVERING, DISCOVERED})

_OUT = (PROBLEM, DELETE)  # every live state can fail or be deleted

TRANSITIONS: dict[str, tuple[str, ...]] = {
    PENDING: (DISCOVERED, *_OUT),                                    # -> discovered: approve
    DISCOVERING: (DISCOVERED, *_OUT),
    DISCOVERED: (ALLOCATED, RESET, *_OUT),
    ALLOCATED: (HARDWARE_INSTALLING, DISCOVERED, RELEASING, RESET, *_OUT),  # -> discovered: release
    HARDWARE_INSTALLING: (HARDWARE_INSTALLED, *_OUT),
    HARDWARE_INSTALLED: (INSTALLING, *_OUT),
    INSTALLING: (INSTALLED, *_OUT),
    INSTALLED: (READYING, REINSTALL, RELEASING, RESET, *_OUT),
    READYING: (READY, *_OUT),
    READY: (READYING, REINSTALL, RELEASING, RESET, *_OUT),            # -> readying: re-run config
    PROBLEM: (READYING, REINSTALL, RELEASING, RESET, DELETE),         # the operator's retries
    RESET: (DISCOVERING, *_OUT),
    REINSTALL: (INSTALLING, *_OUT),
    RELEASING: (DISCOVERED, *_OUT),                                   # disks erased: back in the pool
    DELETE: (),                                                       # then the record is removed
}

# What a node in each state gets when it PXE-boots. Everything up to `installed` runs in the
# discovery image: its agent applies BIOS/RAID settings as jobs (Crowbar 1's hardware install also
# ran from sledgehammer) and then writes the OS image to disk as a job (crowbar.provisioner.install:
# image-based, like Ironic's agent), so the `<os>-install` bootenv, a network installer booted by
# iPXE, is only for OS installer plugins that need one. Installed nodes boot their local disk.
# A problem node gets the discovery image too: reachable by the agent, and nothing on disk is touched.
BOOTENVS: dict[str, str] = {
    PENDING: DISCOVERY,
    DISCOVERING: DISCOVERY,
    DISCOVERED: DISCOVERY,
    ALLOCATED: DISCOVERY,
    HARDWARE_INSTALLING: DISCOVERY,
    HARDWARE_INSTALLED: DISCOVERY,
    INSTALLING: DISCOVERY,
    INSTALLED: LOCAL,
    READYING: LOCAL,
    READY: LOCAL,
    PROBLEM: DISCOVERY,
    RESET: DISCOVERY,
    REINSTALL: DISCOVERY,
    RELEASING: DISCOVERY,
    DELETE: NONE,
}

# How long a node may sit in a state that waits on the machine itself before it counts as stuck.
# States that wait on a person (pending, discovered, allocated, ready, problem) never time out.
TIMEOUTS: dict[str, timedelta] = {
    DISCOVERING: timedelta(minutes=10),
    HARDWARE_INSTALLING: timedelta(minutes=30),
    HARDWARE_INSTALLED: timedelta(minutes=15),
    INSTALLING: timedelta(minutes=45),
    INSTALLED: timedelta(minutes=15),
    READYING: timedelta(minutes=15),
    RESET: timedelta(minutes=15),
    REINSTALL: timedelta(minutes=15),
    RELEASING: timedelta(minutes=240),  # a full erase writes every byte of every disk
}

STATES: tuple[str, ...] = tuple(TRANSITIONS)


def parse(state: str) -> str:
    """The state named `state`, or InvalidInput listing the known ones."""
    value = str(state).strip().lower()
    if value not in TRANSITIONS:
        raise InvalidInput(f"unknown node state {state!r}: expected one of {', '.join(STATES)}",
                           field="state")
    return value


def allowed(state: str) -> tuple[str, ...]:
    """The states a node in `state` may move to next."""
    return TRANSITIONS[parse(state)]


def check(current: str, target: str) -> None:
    """Raise IllegalTransition unless a node may go from `current` to `target`.

    The message names both states and the allowed next ones, so the CLI can print it as it is.
    """
    src, dst = parse(current), parse(target)
    if dst in TRANSITIONS[src]:
        return
    if src == dst:
        raise IllegalTransition(f"node is already {src}")
    nexts = ", ".join(TRANSITIONS[src]) or "nothing (it is being removed)"
    raise IllegalTransition(f"node cannot go from {src} to {dst}; from {src} it can go to: {nexts}")


def bootenv_for(state: str, os: str = DEFAULT_OS) -> str:
    """The bootenv a node in `state` PXE-boots: discovery, local, none or "<os>-install"."""
    return BOOTENVS[parse(state)].format(os=os)


def timed_out(state: str, entered_at, now) -> str | None:
    """Why a node that entered `state` at `entered_at` is stuck at `now`, or None if it is not.

    Takes datetimes or epoch seconds (both the same kind). The reason is what the supervisor
    records when it moves the node to problem.
    """
    limit = TIMEOUTS.get(parse(state))
    if limit is None:
        return None
    elapsed = now - entered_at
    if not isinstance(elapsed, timedelta):
        elapsed = timedelta(seconds=elapsed)
    if elapsed <= limit:
        return None
    return (f"stuck in {state} for {_minutes(elapsed)} (limit {_minutes(limit)}): "
            f"the node never reported the next step")


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} min"


def to_dot() -> str:
    """The state diagram as Graphviz dot text, drawn from TRANSITIONS, BOOTENVS and TIMEOUTS.

    Nodes show their bootenv; edges into problem that a timeout can take are labelled with it.
    """
    lines = ["digraph node_lifecycle {", "  rankdir=LR;", '  node [shape=box, style=rounded];']
    for state in STATES:
        attrs = f'label="{state}\\n[{BOOTENVS[state].format(os="<os>")}]"'
        if state == PROBLEM:
            attrs += ", color=red"
        elif state == DELETE:
            attrs += ", style=dashed"
        lines.append(f'  "{state}" [{attrs}];')
    for state in STATES:
        for target in TRANSITIONS[state]:
            attrs = []
            if target in (PROBLEM, DELETE):
                attrs.append("style=dotted")
            if target == PROBLEM and state in TIMEOUTS:
                attrs.append(f'label="timeout {_minutes(TIMEOUTS[state])}"')
            suffix = f" [{', '.join(attrs)}]" if attrs else ""
            lines.append(f'  "{state}" -> "{target}"{suffix};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dict() -> dict[str, dict]:
    """The transition table as data, for GET /node_states: state -> next states, bootenv and
    timeout in minutes (None when the state never times out)."""
    return {state: {"next": list(TRANSITIONS[state]), "bootenv": BOOTENVS[state],
                    "timeout_minutes": TIMEOUTS[state].total_seconds() / 60 if state in TIMEOUTS else None}
            for state in STATES}


def to_markdown() -> str:
    """The transition table as Markdown, for docs/node-lifecycle.md and `crowbar nodes states`."""
    rows = ["| state | bootenv | may go to | times out after |", "|---|---|---|---|"]
    for state in STATES:
        limit = _minutes(TIMEOUTS[state]) if state in TIMEOUTS else "-"
        nexts = ", ".join(TRANSITIONS[state]) or "- (record removed)"
        rows.append(f"| {state} | `{BOOTENVS[state].format(os='<os>')}` | {nexts} | {limit} |")
    return "\n".join(rows) + "\n"
