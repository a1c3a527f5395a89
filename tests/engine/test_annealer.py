"""The annealer: what may run, in which order, one run per node, special roles, failures, recovery."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import timedelta

from enginekit import nr_of, runs_of
from sqlalchemy import select

from crowbar.db.models import Event, Node, NodeEdge if False else Node  # noqa: F401  (kept simple below)
