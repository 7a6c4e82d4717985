#!/usr/bin/env bash
# Runs the whole benchmark suite and rewrites the tables of BENCHMARKS.md from its results:
# the one documented command (about 8 minutes on a 2-core machine with the release build
# cached, a few more from a cold build; under 15).
#
#   1. builds the release binaries (cube, cube-bench) and, with Docker, the test image;
#   2. the criterion scheduler benchmark (shortened measurement time);
#   3. every cube-bench benchmark against real cube processes (results in target/bench/);
#   4. the Swarm comparisons (scripts/bench-swarm.sh, scripts/bench-swarm-rollout.sh), when a
#      Docker engine answers;
#   5. `cube-bench report`, which rewrites the marked tables of BENCHMARKS.md.
#
# Each step prints its elapsed time; a failed step is reported and the others still run, and
# the script then exits non-zero. Figures are single runs: see BENCHMARKS.md for what limits
# each one.
#
# Usage: scripts/bench.sh            (SWARM_RUNS=2 for two alternating Swarm/Cube runs per N)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
BENCH=target/release/cube-bench
SWARM_RUNS=${SWARM_RUNS:-1}
mkdir -p "$OUT"
rm -rf "$OUT"/*.json "$OUT/steps.tsv" "$OUT/store"

suite_start=$(date +%s.%N)
failed=""
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME COMMAND...: runs a step, records its time, keeps going if it fails.
step() {
  local name=$1 t0 status
  shift
  t0=$(date +%s.%N)
  echo
  echo "=== $name: $*"
  if "$@"; then status=ok; else status="FAILED (exit $?)"; failed="$failed $name"; fi
  local took
  took=$(since "$t0")
  printf '%s\t%s\n' "$name" "$took" >> "$OUT/steps.tsv"
  echo "=== $name: $status in $took s (suite so far $(since "$suite_start") s)"
}

docker_ok=false
if timeout 10 docker info >/dev/null 2>&1; then docker_ok=true; fi

step build cargo build --release --locked -p cube -p cube-bench
if [ -n "$failed" ]; then
  echo "bench: the release build failed; not measuring stale binaries" >&2
  exit 1
fi
if $docker_ok; then
  step image scripts/build-test-image.sh
else
  echo "warning: no Docker engine answers: docker figures and the Swarm comparison are skipped" >&2
fi
rm -rf target/criterion/place_*   # so the report never shows an older run's estimates
step scheduler cargo bench --locked -p cube-core --bench scheduler -- \
  --warm-up-time 0.5 --measurement-time 1.5
step submit "$BENCH" submit --json "$OUT/submit.json"
step submit-placing "$BENCH" submit --clients 64 --sim-nodes 10 --json "$OUT/submit-placing.json"
if $docker_ok; then
  step latency "$BENCH" latency --json "$OUT/latency.json"
else
  step latency "$BENCH" latency --skip-docker --json "$OUT/latency.json"
fi
step failover "$BENCH" failover --runs 3 --json "$OUT/failover.json"
step memory "$BENCH" memory --keep-store "$OUT/store" --json "$OUT/memory.json"
step restart "$BENCH" restart --data-dir "$OUT/store" --json "$OUT/restart.json"
step sim-nodes "$BENCH" sim-nodes --nodes 1000,5000 --tasks 10000 --json "$OUT/sim-nodes.json"
step rollout "$BENCH" rollout --replicas 10 --runs 3 --json "$OUT/rollout.json"
# Managers on etcd: Debian's etcd-server, started by the benchmark on loopback.
if ! command -v etcd >/dev/null; then
  (apt-get install -y etcd-server || { apt-get update && apt-get install -y etcd-server; }) >/dev/null
fi
step ha "$BENCH" ha --json "$OUT/ha.json"
step security "$BENCH" security --json "$OUT/security.json"
# The web UI, measured in Debian's headless Chromium (skipped with a warning without it).
step ui "$BENCH" ui --json "$OUT/ui.json"
if $docker_ok; then
  # The ingress's peer: nginx from Debian (its stream module for the L4 proxy).
  if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    (apt-get install -y nginx libnginx-mod-stream || { apt-get update && apt-get install -y nginx libnginx-mod-stream; }) >/dev/null
  fi
  # ...and the backend that keeps connections alive, built from that package.
  step nginx-image scripts/build-nginx-image.sh
  step ingress "$BENCH" ingress --json "$OUT/ingress.json"
fi
if $docker_ok; then
  step observe "$BENCH" observe --json "$OUT/observe.json"
else
  step observe "$BENCH" observe --skip-docker --json "$OUT/observe.json"
fi
if $docker_ok; then
  step swarm scripts/bench-swarm.sh --runs "$SWARM_RUNS" --json "$OUT/swarm.json"
  step swarm-rollout scripts/bench-swarm-rollout.sh --runs "$SWARM_RUNS" --json "$OUT/swarm-rollout.json"
fi
rm -rf "$OUT/store"
step report "$BENCH" report --results "$OUT" --doc BENCHMARKS.md

echo
echo "bench: whole suite took $(since "$suite_start") s"
if [ -n "$failed" ]; then
  echo "bench: failed steps:$failed" >&2
  exit 1
fi
