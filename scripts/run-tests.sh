#!/usr/bin/env bash
# The whole suite, against SQLite and against a throwaway PostgreSQL cluster on loopback that this
# script starts and always removes.
#   scripts/run-tests.sh            everything but tests/lab on 3 pytest-xdist workers (more than the
#                                   2 cores: the tests often wait), then tests/lab on its own, on 2
#                                   workers (its two groups in tests/conftest.py's XDIST_GROUPS: its
#                                   VMs leave one core idle half the time); fails if either part
#                                   fails, and runs tests/lab even when the first part failed
#   scripts/run-tests.sh ARGS...    one pytest run in this process with ARGS (e.g. -k annealer)
set -euo pipefail
cd "$(dirname "$0")/.."
pgdir=$(mktemp -d /tmp/crowbar-test-pg.XXXXXX)
cleanup() { scripts/test-postgres.sh stop "$pgdir" || true; }
trap cleanup EXIT
CROWBAR_TEST_POSTGRES_URL=$(scripts/test-postgres.sh start "$pgdir")
export CROWBAR_TEST_POSTGRES_URL
# the OpenStack lab test (about half an hour) runs from `make test-openstack`: a later -m wins
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 -m "not openstack")
if [ $# -gt 0 ]; then
  "${pytest[@]}" "$@"
  exit
fi
# loadgroup: the files of each group of tests/conftest.py's XDIST_GROUPS run on one worker
status=0
"${pytest[@]}" -n 3 --dist loadgroup --ignore=tests/lab || status=$?
"${pytest[@]}" -n 2 --dist loadgroup tests/lab || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
exit "$status"
