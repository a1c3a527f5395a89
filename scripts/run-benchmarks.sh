#!/usr/bin/env bash
# Every benchmark, SQLite and a throwaway PostgreSQL on loopback; prints JSON lines per case.
# Figures go to docs/benchmarks.md by hand, with the machine and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
pgdir=$(mktemp -d /tmp/crowbar-bench-pg.XXXXXX)
cleanup() { scripts/test-postgres.sh stop "$pgdir" || true; }
trap cleanup EXIT
pg=$(scripts/test-postgres.sh start "$pgdir")
py=.venv/bin/python
echo "== annealer"; $py benchmarks/anneal.py --nodes 100 1000 10000 --postgres "$pg"
echo "== deploy planning"; $py benchmarks/deploy_plan.py --nodes 1000 10000 --postgres "$pg"
echo "== the agent's requests while installing"; $py benchmarks/agent_deploy.py --nodes 100 1000 10000 --postgres "$pg"
echo "== network";  $py benchmarks/network.py --postgres "$pg"
echo "== list endpoints"; $py benchmarks/api_lists.py --sizes 100 1000 10000 --postgres "$pg"
echo "== dhcp reservations"; $py benchmarks/dhcp_reservations.py --reservations 100 1000 10000
if [ "$(id -u)" = 0 ]; then echo "== ansible batches"; $py benchmarks/ansible_batch.py --targets 1 10 50 --markdown; fi
echo "== online mode: cold vs warm cache"; $py benchmarks/proxy.py
if [ -f benchmarks/provisioning.py ]; then echo "== provisioning"; $py benchmarks/provisioning.py; fi
