#!/usr/bin/env bash
# Installs the Tansu broker used by the system tests into a cache outside the
# repository, keyed by version, so later runs skip the 20-minute compile.
set -euo pipefail

version="${TANSU_VERSION:-0.6.0}"
cache="${TXNOTIFY_CACHE:-$HOME/.cache/txnotify}"
root="$cache/tansu-$version"

if [[ -x "$root/bin/tansu" ]]; then
  echo "$root/bin/tansu"
  exit 0
fi

mkdir -p "$cache"
echo "installing tansu $version into $root (about 20 minutes on 2 cores)" >&2
# A separate target folder keeps the broker's build out of the project's own.
CARGO_TARGET_DIR="$cache/tansu-build" \
  cargo install tansu --locked --version "$version" --features libsql --root "$root" >&2
rm -rf "$cache/tansu-build"
echo "$root/bin/tansu"
