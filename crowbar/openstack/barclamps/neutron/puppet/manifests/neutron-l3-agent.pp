# The L3 agent: puppet-neutron's class, unchanged, parameters from Hiera.
include neutron
include neutron::agents::l3
