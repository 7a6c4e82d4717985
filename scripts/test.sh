#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the HTTP contract, real processes and real Docker
# containers. Docker tests need an engine and the test image (built here when an engine
# answers); without an engine they are skipped locally and fail under CI (CI=1). The etcd
# tests run Debian's etcd-server, and the browser tests Debian's chromium and
# chromium-driver (installed here when missing and possible), the same way.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-protoc.sh
if docker info >/dev/null 2>&1; then
  scripts/build-test-image.sh
else
  echo "warning: no Docker engine answers; docker tests will be skipped (they fail when CI is set)." >&2
  echo "         scripts/ensure-docker.sh starts the local daemon (as root or with sudo)." >&2
fi

# The highly available manager's tests start real etcd members (Debian's etcd-server).
if ! [ -x "${CUBE_ETCD_BIN:-/usr/bin/etcd}" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -qq etcd-server >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq etcd-server >/dev/null; } ||
    echo "warning: cannot install etcd-server; the etcd tests will be skipped (they fail when CI is set)." >&2
fi

# The mutual TLS test captures the manager-worker link with tcpdump (skipped without it,
# except under CI).
if ! command -v tcpdump >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -qq tcpdump >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq tcpdump >/dev/null; } ||
    echo "warning: cannot install tcpdump; the mutual TLS capture will be skipped (it fails when CI is set)." >&2
fi

# The web UI's browser tests drive Debian's headless Chromium through chromedriver (skipped
# without them, except under CI).
if ! { [ -x "${CUBE_CHROMIUM:-/usr/bin/chromium}" ] && [ -x "${CUBE_CHROMEDRIVER:-/usr/bin/chromedriver}" ]; } &&
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    echo "warning: cannot install chromium and chromium-driver; the browser tests will be skipped (they fail when CI is set)." >&2
fi

cargo test --workspace --locked "$@"
