#!/usr/bin/env bash
# Prepares the tools that the system tests run and exports their locations.
#
# Source it to set the variables in the current shell:
#     source scripts/test-env.sh
# or run it to print them as export lines:
#     eval "$(scripts/test-env.sh)"
#
# Exports:
#     TXNOTIFY_TANSU_BIN     the Tansu broker binary
#     TXNOTIFY_PYTHON        python of a virtualenv with tests/support/requirements.txt
#     TXNOTIFY_SYSTEM_TESTS  1, which turns the system tests on
#
# Every step is idempotent. Downloads and builds go to a cache outside the
# repository, ${TXNOTIFY_CACHE:-~/.cache/txnotify}, keyed by version, and a
# later run reuses them. A base Python other than python3 can be chosen with
# TXNOTIFY_BASE_PYTHON.

# Debian packages that the build and the tests need. rdkafka's ssl feature
# needs libssl-dev and pkg-config, and librdkafka needs a C toolchain and zlib.
# The tests use openssl to make certificates, and the kill command from procps
# to send signals. The deploy checks run promtool from the prometheus package on
# the alert rules. NOTE: on a host run by systemd the package also enables and
# starts a Prometheus server on port 9090; `systemctl disable --now prometheus`
# stops it. CI containers have no init system, so nothing starts there.
TXNOTIFY_DEBIAN_PACKAGES=(libssl-dev pkg-config openssl procps make gcc g++ zlib1g-dev prometheus)

txnotify_log() {
  echo "test-env: $*" >&2
}

txnotify_ensure_debian_packages() {
  local base_python="$1"
  local missing=()
  local package
  for package in "${TXNOTIFY_DEBIAN_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null)" != "ii "* ]]; then
      missing+=("$package")
    fi
  done
  # The virtualenv needs a base Python with the venv and ensurepip modules,
  # which Debian ships in python3-venv.
  if ! command -v "$base_python" >/dev/null 2>&1; then
    if [[ "$base_python" != python3 ]]; then
      txnotify_log "TXNOTIFY_BASE_PYTHON=$base_python is not a command; set it to a Python 3 interpreter"
      return 1
    fi
    missing+=(python3 python3-venv)
  elif ! "$base_python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi

  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      txnotify_log "missing Debian packages: ${missing[*]}. Install them as root with: apt-get install ${missing[*]}"
      return 1
    fi
    sudo=(sudo)
  fi
  txnotify_log "installing missing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update >&2 || return 1
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

txnotify_ensure_tansu() {
  local repo="$1" cache="$2"
  mkdir -p "$cache" || return 1
  # The lock keeps two test runs from building the broker at the same time.
  # install-tansu.sh returns at once when the binary is already cached.
  local tansu
  tansu="$(flock "$cache/tansu-install.lock" bash "$repo/scripts/install-tansu.sh")" || return 1
  tansu="$(tail -n 1 <<<"$tansu")"
  if [[ ! -x "$tansu" ]]; then
    txnotify_log "scripts/install-tansu.sh printed '$tansu', which is not an executable file"
    return 1
  fi
  echo "$tansu"
}

txnotify_ensure_venv() {
  local repo="$1" cache="$2" base_python="$3"
  local requirements="$repo/tests/support/requirements.txt"
  # The key covers the interpreter too, because a virtualenv only works with
  # the Python version that created it.
  local key
  key="$({ cat "$requirements" && "$base_python" -c 'import sys, platform; print(sys.version, platform.machine())'; } | sha256sum | cut -c1-16)" || return 1
  local venv="$cache/venv-$key"

  mkdir -p "$cache" || return 1
  (
    flock 9
    if [[ -f "$venv/.complete" && -x "$venv/bin/python" ]]; then
      exit 0
    fi
    txnotify_log "creating the Python virtualenv $venv"
    rm -rf "$venv"
    "$base_python" -m venv "$venv" >&2 &&
      "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$requirements" >&2 &&
      "$venv/bin/python" -m pip check >&2 &&
      "$venv/bin/python" -c 'import aiosmtpd, yaml' &&
      touch "$venv/.complete"
  ) 9>"$cache/venv.lock" || return 1
  echo "$venv/bin/python"
}

txnotify_test_env() {
  local repo cache base_python tansu python
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  cache="${TXNOTIFY_CACHE:-$HOME/.cache/txnotify}"
  base_python="${TXNOTIFY_BASE_PYTHON:-python3}"

  txnotify_ensure_debian_packages "$base_python" || return 1
  tansu="$(txnotify_ensure_tansu "$repo" "$cache")" || return 1
  python="$(txnotify_ensure_venv "$repo" "$cache" "$base_python")" || return 1

  export TXNOTIFY_TANSU_BIN="$tansu"
  export TXNOTIFY_PYTHON="$python"
  export TXNOTIFY_SYSTEM_TESTS=1
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  txnotify_test_env || return 1
else
  set -euo pipefail
  txnotify_test_env
  printf 'export %s=%q\n' \
    TXNOTIFY_TANSU_BIN "$TXNOTIFY_TANSU_BIN" \
    TXNOTIFY_PYTHON "$TXNOTIFY_PYTHON" \
    TXNOTIFY_SYSTEM_TESTS "$TXNOTIFY_SYSTEM_TESTS"
fi
