"""Jigs: pluggable configuration back ends that execute a noderole's run.

A jig is found by name through the `crowbar.jigs` entry point group, so a separate package can add
one (ansible, puppet, ...) without touching this code.
"""

from crowbar.jigs.base import Jig, NodeInfo, RunContext, RunResult, get_jig, jig_names

__all__ = ["Jig", "NodeInfo", "RunContext", "RunResult", "get_jig", "jig_names"]
