"""Provisioning: what brings bare metal from power-on to a node Crowbar drives."""
