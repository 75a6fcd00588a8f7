#!/usr/bin/env bash
# The project's test command: scripts/test.sh [extra arguments for cargo test]
#
# 1. scripts/test-env.sh installs what the system tests need, each step only
#    when it is missing:
#    - Debian packages (libssl-dev, pkg-config, openssl, procps, make, gcc,
#      g++, zlib1g-dev, prometheus for promtool, and python3-venv if the base
#      Python lacks venv), with
#      apt-get update run once first;
#    - the Tansu 0.6.0 broker, built by scripts/install-tansu.sh into
#      ~/.cache/txnotify/tansu-0.6.0/ (the first build took about 30 minutes
#      on a 2-core machine that was running other builds too);
#    - a Python virtualenv with the packages pinned in
#      tests/support/requirements.txt, in ~/.cache/txnotify/venv-<hash>/,
#      where the hash covers that file and the Python version.
#    TXNOTIFY_CACHE replaces ~/.cache/txnotify.
# 2. It runs cargo test --workspace --all-targets with TXNOTIFY_SYSTEM_TESTS=1,
#    so the system tests in tests/ run against the real broker and SMTP
#    server, and exits with cargo's status.
#
# The tests stop the processes they start when they finish or fail. cargo
# runs in a process group of its own, so that anything still running when it
# exits, for example after a test process was killed, is stopped too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/test-env.sh

# The script runs without job control, so the background child is not a
# group leader and setsid does not fork again. cargo thus leads a new process
# group whose id is $!.
setsid cargo test --workspace --all-targets "$@" &
cargo_pid=$!

stop_leftover_processes() {
  if ! kill -0 -- "-$cargo_pid" 2>/dev/null; then
    return 0
  fi
  echo "test.sh: stopping processes left running in test process group $cargo_pid" >&2
  kill -TERM -- "-$cargo_pid" 2>/dev/null || true
  # A paused broker only handles SIGTERM once it runs again.
  kill -CONT -- "-$cargo_pid" 2>/dev/null || true
  local waited=0
  while kill -0 -- "-$cargo_pid" 2>/dev/null && ((waited < 50)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL -- "-$cargo_pid" 2>/dev/null || true
}

trap 'stop_leftover_processes; exit 130' INT TERM

status=0
wait "$cargo_pid" || status=$?
stop_leftover_processes
exit "$status"
