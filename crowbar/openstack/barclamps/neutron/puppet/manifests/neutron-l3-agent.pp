# The L3 agent: puppet-neutron's class, unchanged, parameters from Hiera.
include neutron
include neutron::config
include neutron::agents::l3
