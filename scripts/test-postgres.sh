#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the test suite and benchmarks.
#   scripts/test-postgres.sh start DIR   -> initdb + start; prints the SQLAlchemy URL on stdout
#   scripts/test-postgres.sh stop DIR    -> stop the cluster (by its postmaster.pid) and remove DIR
# Installs Debian's postgresql package when no server binaries are present.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}

find_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_owner() {  # initdb and postgres refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  bindir=$(find_bindir)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "installing postgresql from Debian's packages..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir)
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_owner "$bindir/initdb" -D "$dir/data" -U crowbar --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1
  # fsync off: the cluster is thrown away after the run, so durability buys nothing here.
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB" >&2
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U crowbar crowbar_test
  echo "postgresql+psycopg://crowbar@127.0.0.1:$port/crowbar_test"
  ;;
stop)
  bindir=$(find_bindir)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
  fi
  rm -rf "$dir"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
