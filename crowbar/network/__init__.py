"""Networking without a server: the network model, IP allocation, conduits, interface plans,
their renderers, and Neutron Linux Bridge conventions.

Everything here is pure (no database, no I/O beyond reading the built-in template) so the DB
layer, the API and the CLI can share one implementation and tests need nothing running.
"""
