"""Fixtures for the OpenStack services (openstack_helpers.py has the fake Neutron API and the
deployment with an active neutron-server)."""

from __future__ import annotations

import pytest

from openstack_helpers import FakeNeutron


@pytest.fixture
def fake_neutron():
    fake = FakeNeutron()
    yield fake
    fake.close()


@pytest.fixture
def unused_url():
    """A URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


