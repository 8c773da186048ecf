#!/usr/bin/env bash
# make demo: starts hostel serve with a private root on unprivileged ports and
# deploys the example monoliths. The daemon keeps running; stop it with
# `make demo-stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
HTTP=${HOSTEL_DEMO_HTTP:-127.0.0.1:8080}
# HOSTEL_STORE=etcd-embed keeps the demo's state in an etcd member the
# daemon runs (ROOT/etcd) instead of the bbolt file ROOT/state.db.
case ${HOSTEL_STORE:-bbolt} in
  bbolt) store=() ;;
  etcd-embed) store=(--etcd-embed) ;;
  *) echo "HOSTEL_STORE=$HOSTEL_STORE: want bbolt or etcd-embed" >&2; exit 2 ;;
esac
# Services run as their own users, so every directory above the root must be
# traversable by others. A clone under /root (0700) is not: then the root
# lives under /var/lib/hostel-demo and .demo points to it.
reachable() {
  local d=$1
  while [[ $d != / ]]; do
    d=$(dirname "$d")
    [[ $(stat -c %A "$d") == *[xt] ]] || return 1
  done
}
if [[ -n ${HOSTEL_DEMO_ROOT:-} ]]; then
  ROOT=$HOSTEL_DEMO_ROOT
  mkdir -p "$ROOT"
else
  if [[ ! -e .demo ]] && ! reachable "$PWD/.demo"; then
    real=/var/lib/hostel-demo/$(printf %s "$PWD" | sha256sum | cut -c1-12)
    mkdir -p "$real" && chmod 755 /var/lib/hostel-demo "$real"
    ln -s "$real" .demo
    echo "$PWD is not reachable by the services' users: the demo's root is $real (.demo points to it)"
  fi
  mkdir -p .demo
  ROOT=$(realpath .demo)
fi
export HOSTEL_ROOT=$ROOT
bin/hostel version
scripts/install-deps.sh demo # Nix and PostgreSQL 15, if missing
scripts/demo-postgres.sh "$ROOT" # the guestbook's database server, before the daemon resumes it
if [[ -S $ROOT/hostel.sock ]] && bin/hostel status >/dev/null 2>&1; then
  echo "a demo daemon is already running on $ROOT"
else
  nohup bin/hostel serve --http "$HTTP" --https "" "${store[@]}" >"$ROOT/daemon.log" 2>&1 &
  pid=$!
  echo $pid >"$ROOT/daemon.pid"
  # Until it answers: its socket is there before (bound early, or left by a
  # daemon that was killed).
  for _ in $(seq 300); do
    bin/hostel status >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  bin/hostel status >/dev/null 2>&1 || { echo "daemon did not start:"; cat "$ROOT/daemon.log"; exit 1; }
  echo "hostel serve is running (pid $pid, log $ROOT/daemon.log)"
fi
# The example's packages are built by Nix from examples/monoliths/hostel.nix.
cd examples/monoliths
../../bin/hostel plan hostel.nix
../../bin/hostel deploy --no-confirm hostel.nix
../../bin/hostel status
PORT=${HTTP##*:}
cat <<MSG

The example monoliths are live. Try:

  curl http://shop.localhost:$PORT/
  curl -i http://www.shop.localhost:$PORT/cart?x=1     # 301 to shop.localhost
  curl http://blog.localhost:$PORT/                    # calls the internal quotes service
  curl -X PUT --data 'hello from the wiki' http://wiki.localhost:$PORT/home
  curl http://wiki.localhost:$PORT/home
  curl --data 'hello from the guestbook' http://guestbook.localhost:$PORT/  # a row in its own PostgreSQL database
  curl http://guestbook.localhost:$PORT/
  bin/hostel --root $ROOT db shell guestbook -- -c 'SELECT * FROM messages'
  curl -H 'Host: nobody.example' http://127.0.0.1:$PORT/ # 404: unknown host

Then change quotes' GREETING in examples/monoliths/hostel.nix (or its source in
examples/monoliths/quotes/) and run:

  export HOSTEL_ROOT=$ROOT
  cd examples/monoliths && ../../bin/hostel plan && ../../bin/hostel deploy

Stop everything with: make demo-stop
MSG
