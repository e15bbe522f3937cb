#!/usr/bin/env bash
# Prove src/db/schema.rs is exactly what `diesel print-schema` gives for
# migrations/, and that every migration's down.sql reverts cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v diesel >/dev/null 2>&1; then
  echo "check-schema: installing diesel_cli (about 2 minutes, once)"
  cargo install diesel_cli --version 2.3.14 --no-default-features --features postgres --locked --quiet
fi

admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="haoka_schema_check_$$"
url="${admin%/*}/$db"
cleanup() { psql "$admin" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# A config without [print_schema], so running migrations never rewrites
# src/db/schema.rs; the comparison below is the check.
conf=$(mktemp)
printf '[migrations_directory]\ndir = "%s/migrations"\n' "$PWD" > "$conf"
trap 'cleanup; rm -f "$conf"' EXIT

psql "$admin" -qc "CREATE DATABASE \"$db\"" >/dev/null
diesel migration run --database-url "$url" --config-file "$conf" >/dev/null
diesel migration redo --all --database-url "$url" --config-file "$conf" >/dev/null
if ! diff -u src/db/schema.rs <(diesel print-schema --database-url "$url" | rustfmt --edition 2021); then
  echo "check-schema: src/db/schema.rs differs from the migrations (run diesel print-schema)" >&2
  exit 1
fi
echo "check-schema: schema.rs matches the migrations; down migrations revert cleanly"
