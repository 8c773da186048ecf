#!/usr/bin/env bash
# Starts the demo's private PostgreSQL cluster, unless one already answers:
# data in ROOT/pg, socket in /tmp/hostel-demo-pg, port 5433 — the
# postgres.admin that examples/monoliths/hostel.json names. Peer
# authentication only: the daemon's user connects as postgres, every other
# system user as the role of its own name. Stop it with `make demo-stop`.
#
# usage: scripts/demo-postgres.sh ROOT [stop]
set -euo pipefail
ROOT=$(realpath "$1") # its data directory must be reachable by postgres, not through a symlink
cd / # postgres runs its tools here, and may not be able to enter the caller's directory
SOCK=/tmp/hostel-demo-pg
PORT=5433
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [[ -z $BIN || ! -x $BIN/initdb ]]; then
  echo "PostgreSQL is not installed (apt-get install -y postgresql-15); the guestbook example needs it" >&2
  exit 1
fi
me=$(id -un)
if [[ $(id -u) == 0 ]]; then as_pg=(runuser -u postgres --); owner=postgres; else as_pg=(); owner=$me; fi
DATA=$ROOT/pg
if [[ ${2:-} == stop ]]; then
  if [[ -f $DATA/postmaster.pid ]]; then
    "${as_pg[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null && echo "stopped the demo PostgreSQL"
  fi
  exit 0
fi
if "$BIN/pg_isready" -q -h "$SOCK" -p "$PORT"; then
  echo "PostgreSQL already answers on $SOCK port $PORT"
  exit 0
fi
mkdir -p "$SOCK" "$DATA"
chown "$owner" "$SOCK" "$DATA"
chmod 755 "$SOCK"
chmod 700 "$DATA"
if [[ ! -f $DATA/PG_VERSION ]]; then
  "${as_pg[@]}" "$BIN/initdb" -D "$DATA" --username=postgres --auth-local=peer --auth-host=reject \
    --encoding=UTF8 --locale=C >"$ROOT/pg-initdb.log"
  printf 'local all all peer map=hostel\n' >"$DATA/pg_hba.conf"
  printf 'hostel %s postgres\nhostel /^(.*)$ \\1\n' "$me" >"$DATA/pg_ident.conf"
  chown "$owner" "$DATA/pg_hba.conf" "$DATA/pg_ident.conf"
fi
"${as_pg[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/postgresql.log" -w \
  -o "-p $PORT -k $SOCK -c listen_addresses=''" start >/dev/null
echo "PostgreSQL is running: data $DATA, socket $SOCK, port $PORT (log $DATA/postgresql.log)"
