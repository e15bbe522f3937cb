#!/usr/bin/env bash
# The project's test command (README; CI runs exactly this): PostgreSQL up,
# formatting, lints, schema check, alert rules, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/pg-up.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
./scripts/check-schema.sh
./scripts/check-alerts.sh
# Property tests: 10,000 cases each in CI (PROPTEST_CASES overrides).
PROPTEST_CASES=${PROPTEST_CASES:-10000} cargo test --locked -- --test-threads "${TEST_THREADS:-6}"
