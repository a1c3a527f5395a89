"""Crowbar: bare-metal provisioning and orchestration (barclamps, noderoles, an annealer)."""

__version__ = "0.1.0"
