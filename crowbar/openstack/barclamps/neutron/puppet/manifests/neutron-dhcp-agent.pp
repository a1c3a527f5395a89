# The DHCP agent: puppet-neutron's class, unchanged, parameters from Hiera.
include neutron
include neutron::agents::dhcp
