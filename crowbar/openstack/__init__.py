"""OpenStack on Crowbar's nodes (issue 16): the `openstack-base` and `neutron` barclamps and the
attributes Crowbar's model gives their roles.

- `barclamps/openstack-base`: the message bus (Debian's rabbitmq-server) and the database (Debian's
  mariadb-server), each a role of the Puppet jig applying the upstream puppetlabs-rabbitmq and
  puppetlabs-mysql modules Debian packages as puppet-module-neutron's dependencies.
- `barclamps/neutron`: neutron-server and the Linux Bridge, DHCP and L3 agents, each a thin manifest
  that includes OpenStack's own puppet-neutron 21.0.0 classes (Debian's puppet-module-neutron)
  unchanged; every class parameter comes from Hiera, the Puppet jig's per-run data layer.
- `config`: the pure part, Crowbar's model -> those Hiera keys (tenant VLAN range from nova_fixed,
  physical_interface_mappings from the node's conduit, addresses on the admin network).
- `crowbar.services.openstack`: reads the model for one run and places the keys (the annealer's
  `prepare` hook).

The nodes run the `debian-12-openstack` image (crowbar/provisioner/os/), which has every package
installed and every daemon disabled at boot: the roles configure and start them.
"""

from pathlib import Path

BARCLAMPS = Path(__file__).parent / "barclamps"


def barclamp_paths() -> list[Path]:
    """The OpenStack barclamps, in import order (neutron requires openstack-base's roles)."""
    return [BARCLAMPS / "openstack-base", BARCLAMPS / "neutron"]
