# The DHCP agent: puppet-neutron's class, unchanged, parameters from Hiera.
include neutron
include neutron::config
include neutron::agents::dhcp
