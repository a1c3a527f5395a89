import dataclasses

import pytest

from crowbar.network.model import NetworkTemplate, default_template


@pytest.fixture
def template() -> NetworkTemplate:
    return default_template()


@pytest.fixture
def with_networks(template):
    """The default template with some networks replaced: with_networks(storage={"vlan": 201})."""
    def build(base: NetworkTemplate | None = None, **changes) -> NetworkTemplate:
        base = base or template
        networks = dict(base.networks)
        for name, fields in changes.items():
            networks[name] = dataclasses.replace(networks[name], **fields)
        return dataclasses.replace(base, networks=networks)
    return build


@pytest.fixture
def two_nics() -> list[dict]:
    return [
        {"name": "eth0", "mac": "52:54:00:00:00:01", "speed": 1000, "driver": "e1000e",
         "bus": "0000:01:00.0"},
        {"name": "eth1", "mac": "52:54:00:00:00:02", "speed": "1g", "driver": "e1000e",
         "bus": "0000:01:00.1"},
    ]
