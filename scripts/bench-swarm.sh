#!/usr/bin/env bash
# Cube and Docker Swarm side by side on the same Docker engine: the time from nothing to N
# replicas of the test image running `sleep 3600`, for N = 10, 50 and 100, in alternating runs.
#
#   Swarm: `docker swarm init` + `docker service create --replicas N --init`, then
#          `docker service ps` polled every 100 ms until N tasks are Running.
#   Cube:  `cube-bench scale-up --tasks N`: start a manager and a worker, submit N docker
#          tasks, poll `GET /v1/tasks?state=running` every 100 ms until N run.
#
# Prints each run and the ratio Cube median / Swarm median, and writes them as JSON. The
# engine is left as it was found: services removed (scaled down a few at a time first), swarm
# mode left, the docker_gwbridge network swarm creates removed if it was not there before,
# leftover containers removed five at a time, also when the script fails or is interrupted.
#
# Usage: scripts/bench-swarm.sh [--runs R] [--sizes "10 50 100"] [--json FILE]
# Needs: a Docker engine, the test image (scripts/build-test-image.sh) and
# target/release/cube-bench (cargo build --release -p cube -p cube-bench).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

RUNS=2
SIZES="10 50 100"
JSON=target/bench/swarm.json
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

IMAGE=cube-test/busybox:latest
SERVICE=cube-bench-swarm
CUBE_BENCH=${CUBE_BENCH_BIN:-target/release/cube-bench}
POLL=0.1
mkdir -p "$(dirname "$JSON")"

NAME=bench-swarm
# shellcheck source=scripts/swarm-lib.sh
. scripts/swarm-lib.sh
swarm_preflight
swarm_probe swarm
swarm_restore

# One Swarm run: prints the seconds from `swarm init` to N Running tasks.
swarm_run() {
  local n=$1 t0 t1 running
  t0=$(now)
  d swarm init --advertise-addr 127.0.0.1 >/dev/null
  # The image is local only (no registry), which Swarm warns about on stderr.
  d service create --detach --quiet --name "$SERVICE" --replicas "$n" --init \
    --stop-grace-period 2s "$IMAGE" sleep 3600 >/dev/null 2>&1
  local deadline=$(( $(date +%s) + 300 ))
  while :; do
    running=$(d service ps "$SERVICE" --filter desired-state=running \
      --format '{{.CurrentState}}' | grep -c '^Running' || true)
    [ "$running" -ge "$n" ] && break
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "bench-swarm: only $running of $n Swarm tasks running after 300 s" >&2
      return 1
    fi
    sleep "$POLL"
  done
  t1=$(now)
  swarm_restore
  elapsed "$t0" "$t1"
}

# One Cube run: prints the seconds from starting the manager to N running tasks.
cube_run() {
  local n=$1 out
  out=$("$CUBE_BENCH" scale-up --tasks "$n" --poll 100ms) || {
    echo "$out" >&2
    return 1
  }
  echo "$out" | sed -n 's/^RESULT seconds=//p'
}


echo "bench-swarm: engine $(d version --format '{{.Server.Version}}'), sizes $SIZES, $RUNS run(s) each, alternating"
entries=""
for n in $SIZES; do
  swarm_times=""
  cube_times=""
  for r in $(seq "$RUNS"); do
    # Alternate which system goes first, so neither always runs on a fresher engine.
    if [ $((r % 2)) -eq 1 ]; then order="swarm cube"; else order="cube swarm"; fi
    for system in $order; do
      if [ "$system" = swarm ]; then
        s=$(swarm_run "$n")
        swarm_times="$swarm_times $s"
      else
        s=$(cube_run "$n")
        cube_times="$cube_times $s"
      fi
      printf '  N=%-4s run %s  %-5s %8.2f s\n' "$n" "$r" "$system" "$s"
    done
  done
  sm=$(echo "$swarm_times" | median)
  cm=$(echo "$cube_times" | median)
  ratio=$(awk -v c="$cm" -v s="$sm" 'BEGIN { printf "%.3f", (s > 0 ? c / s : 0) }')
  printf '  N=%-4s Swarm median %.2f s, Cube median %.2f s, ratio Cube/Swarm %s\n' "$n" "$sm" "$cm" "$ratio"
  entry=$(printf '{"replicas": %s, "swarm_s": [%s], "cube_s": [%s], "swarm_median_s": %s, "cube_median_s": %s, "ratio": %s}' \
    "$n" "$(json_list "$swarm_times")" "$(json_list "$cube_times")" "$sm" "$cm" "$ratio")
  entries="${entries:+$entries, }$entry"
done
engine=$(d version --format '{{.Server.Version}}')
printf '{"bench": "swarm", "engine": "%s", "runs": %s, "poll_s": %s, "finished_at": "%s", "sizes": [%s]}\n' \
  "$engine" "$RUNS" "$POLL" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$entries" > "$JSON"
echo "bench-swarm: results written to $JSON"
