#!/usr/bin/env bash
# Check the Prometheus rules in deploy/prometheus with the real promtool:
# `promtool check rules` (syntax, PromQL, templates) and `promtool test
# rules` (the unit tests: each alert fires, and stays quiet when it should).
#
# promtool is taken from PROMTOOL, else PATH, else the cache below. When
# none has it, it is installed there from Debian's `prometheus` package
# without installing the package: the .deb is downloaded and only promtool
# is extracted (about 5 s, once; no server is started, nothing else is
# installed). Safe to run again, and by several users at once.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=deploy/prometheus/haoka-sync.rules.yml
tests=(deploy/prometheus/haoka-sync.rules.test.yml deploy/prometheus/haoka-sync.rules.history.test.yml)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/haoka-sync/tools"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_promtool() {
  echo "check-alerts: installing promtool from Debian's prometheus package into $cache (once)"
  local tmp started=$SECONDS
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  # apt drops to its _apt user to download when run as root: let it write.
  if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    # No package lists yet (a fresh image): fetch them, then try again.
    as_root apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  mkdir -p "$cache"
  # Rename within the cache directory, so a concurrent run never sees half a file.
  cp "$tmp/usr/bin/promtool" "$cache/.promtool.$$"
  mv -f "$cache/.promtool.$$" "$cache/promtool"
  echo "check-alerts: installed $("$cache/promtool" --version 2>&1 | head -n 1) in $((SECONDS - started)) s"
}

if [ -n "${PROMTOOL:-}" ]; then
  promtool="$PROMTOOL"
elif command -v promtool >/dev/null 2>&1; then
  promtool=$(command -v promtool)
else
  promtool="$cache/promtool"
  if ! [ -x "$promtool" ] || ! "$promtool" --version >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "check-alerts: promtool is missing and there is no apt-get: install Prometheus' promtool and put it on PATH (or set PROMTOOL)" >&2
      exit 1
    fi
    install_promtool
  fi
fi

"$promtool" check rules "$rules"
"$promtool" test rules "${tests[@]}"
