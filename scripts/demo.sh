#!/usr/bin/env bash
# Builds Cube and brings up a local cluster with a demo task: `cube dev --demo` (a manager and
# one worker in one process, state in .cube/dev). Uses Docker when an engine answers (building
# the test image first: there is no registry to pull from), host processes otherwise.
# The cluster stays in the foreground; Ctrl-C stops it (tasks keep running and are picked up
# again by the next start).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-protoc.sh
cargo build --release --locked --bin cube
if docker info >/dev/null 2>&1; then
  scripts/build-test-image.sh
fi
exec ./target/release/cube dev --demo "$@"
