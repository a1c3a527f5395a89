#!/usr/bin/env bash
# The whole suite, against SQLite and against a throwaway PostgreSQL cluster on loopback that this
# script starts and always removes.
set -euo pipefail
cd "$(dirname "$0")/.."
pgdir=$(mktemp -d /tmp/crowbar-test-pg.XXXXXX)
cleanup() { scripts/test-postgres.sh stop "$pgdir" || true; }
trap cleanup EXIT
CROWBAR_TEST_POSTGRES_URL=$(scripts/test-postgres.sh start "$pgdir")
export CROWBAR_TEST_POSTGRES_URL
# the OpenStack lab test (about half an hour) runs from `make test-openstack`: a later -m wins
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 -m "not openstack" "$@"
