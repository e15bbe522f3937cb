# shellcheck shell=bash
# Sourced by the scripts in bench/ (not run on its own).
#
# - Moves to the repository root, whatever the current directory; a relative
#   CARGO_TARGET_DIR is taken relative to the directory the script was
#   started from, as cargo itself would.
# - build_release ARGS...: `cargo build --release ARGS...`, then EXE[name] is
#   the path of each binary or example built, as cargo reports it (so any
#   CARGO_TARGET_DIR, `build.target-dir` or `--target` works).
# - bench_db DEFAULT: the benchmark database's name (BENCH_DB, else DEFAULT),
#   checked, since it is dropped before and after the run: never the
#   database of ADMIN_URL, `postgres`, a template or the service's default.

if [ -n "${CARGO_TARGET_DIR:-}" ] && [[ $CARGO_TARGET_DIR != /* ]]; then
  CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
  export CARGO_TARGET_DIR
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

declare -A EXE=()

build_release() {
  local json path
  # JSON messages on stdout (one per line), diagnostics rendered on stderr.
  json=$(cargo build --release --quiet --message-format=json-render-diagnostics "$@")
  while IFS= read -r path; do
    EXE[$(basename "$path")]=$path
  done < <(grep -o '"executable":"[^"]*"' <<<"$json" | sed -E 's/^"executable":"(.*)"$/\1/')
}

# The path of a binary built by build_release, or exit with a clear message.
exe() {
  if [ -z "${EXE[$1]:-}" ]; then
    echo "$0: cargo reported no executable named $1" >&2
    exit 1
  fi
  printf '%s\n' "${EXE[$1]}"
}

# field NAME LINE: the value of NAME=value in a RESULT line.
field() { sed -E "s/.* $1=([^ ]+).*/\\1/" <<<"$2"; }

# sql STATEMENT: run it on the benchmark database ($DB_URL), unaligned.
sql() { psql -v ON_ERROR_STOP=1 -XAtq "$DB_URL" -c "$1"; }

# gen COUNT PREFIX THREADS BASE: COUNT distinct callbacks (by $GEN, signed
# with $SECRET), dealt round-robin into one file per wrk thread
# (BASE.<i>.tsv): a thread loads only its own share, so loading does not
# overlap the measured run for long.
gen() {
  "$GEN" "$1" "$2" "$SECRET" "$4.tsv"
  awk -v t="$3" -v base="$4" '{ print > (base "." ((NR - 1) % t) ".tsv") }' "$4.tsv"
  rm -f "$4.tsv"
}

bench_db() {
  local name=${BENCH_DB:-$1}
  if ! [[ $name =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
    echo "$0: BENCH_DB=$name: use lower-case letters, digits and _ (it is dropped after the run)" >&2
    exit 2
  fi
  case $name in
    postgres | template0 | template1 | haoka_sync | "${ADMIN_URL##*/}")
      echo "$0: BENCH_DB=$name: refusing to use (and drop) that database" >&2
      exit 2
      ;;
  esac
  printf '%s\n' "$name"
}
