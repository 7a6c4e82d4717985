#!/usr/bin/env bash
# Builds Cube, starts a worker on 127.0.0.1:5556 and runs a demo task on it. The worker stays
# in the foreground; Ctrl-C stops it (tasks keep running, as with any orchestrator agent).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin cube
driver=process
if docker info >/dev/null 2>&1; then
  scripts/build-test-image.sh
  driver=docker
fi

./target/release/cube worker --listen 127.0.0.1:5556 --data-dir .cube/worker &
worker=$!
trap 'kill -INT $worker 2>/dev/null; wait $worker' INT TERM EXIT

for _ in $(seq 100); do
  curl -sf localhost:5556/v1/health >/dev/null && break
  sleep 0.1
done

if [ "$driver" = docker ]; then
  spec='{"name": "demo", "driver": "docker", "image": "cube-test/busybox:latest", "command": "sh", "args": ["-c", "echo hello from cube; sleep 3600"]}'
else
  spec='{"name": "demo", "driver": "process", "command": "sh", "args": ["-c", "echo hello from cube; sleep 3600"]}'
fi
echo "submitting a $driver task:"
curl -s -X POST localhost:5556/v1/tasks -d "$spec"
echo
echo "worker running at http://127.0.0.1:5556 — try: curl -s localhost:5556/v1/tasks"
wait $worker
