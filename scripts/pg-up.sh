#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 for user postgres without a
# password (trust), as the default DATABASE_URL expects. Safe to run again.
# Installs the server and libpq (needed to build and run diesel) when missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; }
ready() { echo "pg-up: PostgreSQL is ready on 127.0.0.1:5432"; }

need=()
command -v psql >/dev/null 2>&1 || need+=(postgresql postgresql-client)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
[ -e /usr/include/postgresql/libpq-fe.h ] || need+=(libpq-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "pg-up: installing ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

if answers; then
  ready
  exit 0
fi

version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$version" ]; then
  echo "pg-up: no PostgreSQL cluster found under /etc/postgresql" >&2
  exit 1
fi
if ! pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
  echo "pg-up: starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

# A stock Debian cluster asks for a password on 127.0.0.1: trust loopback.
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 1
done
if ! answers; then
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  echo "pg-up: switching loopback connections in $hba to trust"
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  sleep 1
fi
if ! answers; then
  echo "pg-up: PostgreSQL still does not accept postgres@127.0.0.1:5432 without a password" >&2
  exit 1
fi
ready
