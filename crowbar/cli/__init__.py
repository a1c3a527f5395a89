"""The `crowbar` command line: a thin client of the REST API (plus `server` and `db`)."""
