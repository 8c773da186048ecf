#!/usr/bin/env bash
# Installs, from Debian's packages, what `make test` (and `make demo`) need and
# this machine lacks. Idempotent: with everything present it installs nothing
# and runs no apt-get. Needs root only when something is missing.
#
#   scripts/install-deps.sh test   # everything the tests use
#   scripts/install-deps.sh demo   # what `make demo` uses
#   scripts/install-deps.sh bench  # what `make bench` uses beyond that (nginx)
set -euo pipefail
what=${1:-test}
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have curl || need+=(curl)
# Nix (single-user as root, offline) builds hostel.nix specs.
have nix-build || need+=(nix-bin)
# PostgreSQL 15: the demo's guestbook and the database tests, which start private clusters.
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || need+=(postgresql-15)
if [[ $what == test ]]; then
  # Service users are made with useradd.
  have useradd || need+=(passwd)
  # OpenSSH (client and server) for the --target tests.
  [[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
  have ssh || need+=(openssh-client)
  # Let's Encrypt's Pebble for the ACME tests.
  have pebble && have pebble-challtestsrv || need+=(pebble)
  # openssl makes the self-signed certificates of the PostgreSQL TLS tests.
  have openssl || need+=(openssl)
  # Prometheus: promtool checks the metrics' text, and a real server scrapes them.
  have promtool && have prometheus || need+=(prometheus)
  # Debian's etcd (3.4): the etcd store passes its conformance suite against it too.
  have etcd || need+=(etcd-server)
  # The apps of docs/apps.md, run as Debian ships them (TestAppsOfTheDocs): Python with
  # gunicorn and uvicorn, Node, Ruby with puma. Services get PATH=/usr/local/bin:/usr/bin…,
  # so these are Debian's own, in /usr/bin, whatever else this machine has.
  [[ -x /usr/bin/python3 ]] || need+=(python3)
  /usr/bin/python3 -c 'import gunicorn' 2>/dev/null || need+=(python3-gunicorn)
  /usr/bin/python3 -c 'import uvicorn' 2>/dev/null || need+=(python3-uvicorn)
  [[ -x /usr/bin/node ]] || need+=(nodejs)
  [[ -x /usr/bin/puma ]] || need+=(puma)
  # systemd-analyze verifies hostel install's units; systemd-socket-activate passes
  # listeners the way systemd does (no systemd runs as PID 1 for either).
  have systemd-analyze && have systemd-socket-activate || need+=(systemd)
  # ip (network namespaces, veth links, a bridge) puts each node of the cluster tests in a
  # network of its own, whose link a test cuts.
  have ip || need+=(iproute2)
  # Chromium, headless, drives the dashboard's pages (TestDashboard).
  have chromium || need+=(chromium)
fi
if [[ $what == bench ]]; then
  # nginx serves the binary cache the cluster's own is measured against.
  have nginx || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
fi
((${#need[@]})) || exit 0
if ((EUID != 0)); then
  echo "missing Debian packages: ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}"
