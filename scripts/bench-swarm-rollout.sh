#!/usr/bin/env bash
# Cube and Docker Swarm side by side on the same Docker engine: a rolling update of N replicas
# of the busybox httpd with an HTTP health check, changing an environment variable, 2 at a time,
# start-first. Timed from the update command to the rollout's end, with the number of healthy
# replicas sampled every 100 ms during it.
#
#   Swarm: `docker service create --replicas N --health-cmd 'wget -q -O /dev/null
#          http://127.0.0.1/' --health-interval 1s`, then `docker service update --env-add
#          V=2 --update-parallelism 2 --update-order start-first` (which returns once the update
#          is complete); healthy = containers of the service whose health is `healthy`.
#   Cube:  `cube-bench rollout --driver docker --replicas N --parallel 2`: a manager and a
#          worker, a service with an HTTP check (interval 1s), updated the same way; healthy =
#          the service's healthy count.
#
# Prints each run and the ratio Cube median / Swarm median, and writes them as JSON. The engine
# is left as it was found (service removed, swarm mode left, docker_gwbridge removed if it was
# not there before, leftover containers removed), also when the script fails or is interrupted.
#
# Usage: scripts/bench-swarm-rollout.sh [--runs R] [--replicas N] [--json FILE]
# Needs: a Docker engine, the test image (scripts/build-test-image.sh) and
# target/release/cube-bench (cargo build --release -p cube -p cube-bench).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

RUNS=1
REPLICAS=20
JSON=target/bench/swarm-rollout.json
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --replicas) REPLICAS=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

IMAGE=cube-test/busybox:latest
SERVICE=cube-bench-rollout
CUBE_BENCH=${CUBE_BENCH_BIN:-target/release/cube-bench}
mkdir -p "$(dirname "$JSON")"

NAME=bench-swarm-rollout
sampler_pid=""
# shellcheck source=scripts/swarm-lib.sh
. scripts/swarm-lib.sh
swarm_preflight
swarm_probe swarm-rollout

healthy_now() { d ps -q --filter "label=com.docker.swarm.service.name=$SERVICE" --filter health=healthy | wc -l; }

# One Swarm run: prints "<seconds> <fewest healthy>".
swarm_run() {
  local n=$1 t0 t1 fewest samples
  d service create --detach --quiet --name "$SERVICE" --replicas "$n" \
    --health-cmd 'wget -q -O /dev/null http://127.0.0.1/ || exit 1' --health-interval 1s \
    --health-timeout 1s --health-retries 3 --stop-grace-period 1s \
    --env V=1 "$IMAGE" httpd -f -p 80 -h /www >/dev/null 2>&1
  local deadline=$(( $(date +%s) + 300 ))
  until [ "$(healthy_now)" -ge "$n" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "bench-swarm-rollout: Swarm replicas not healthy after 300 s" >&2
      return 1
    fi
    sleep 0.2
  done
  local samples_file
  samples_file=$(mktemp)
  ( while :; do healthy_now >> "$samples_file"; sleep 0.1; done ) &
  sampler_pid=$!
  t0=$(now)
  d service update --quiet --env-add V=2 --update-parallelism 2 --update-order start-first \
    --update-delay 0s "$SERVICE" >/dev/null 2>&1
  t1=$(now)
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
  fewest=$(sort -n "$samples_file" | head -1)
  samples=$(wc -l < "$samples_file")
  rm -f "$samples_file"
  d service rm "$SERVICE" >/dev/null 2>&1
  for _ in $(seq 600); do
    [ -z "$(service_containers -a)" ] && break
    sleep 0.1
  done
  echo "$(elapsed "$t0" "$t1") ${fewest:-0} $samples"
}

# One Cube run: prints "<seconds> <fewest healthy>".
cube_run() {
  local n=$1 out seconds fewest
  out=$("$CUBE_BENCH" rollout --driver docker --replicas "$n" --parallel 2 --runs 1) || {
    echo "$out" >&2
    return 1
  }
  seconds=$(echo "$out" | sed -n 's/^RESULT seconds=\([0-9.]*\).*/\1/p')
  fewest=$(echo "$out" | sed -n 's/^RESULT.*fewest_healthy=\([0-9]*\).*/\1/p')
  echo "$seconds $fewest"
}


echo "bench-swarm-rollout: engine $(d version --format '{{.Server.Version}}'), $REPLICAS replicas, 2 at a time start-first, $RUNS run(s)"
swarm_times=""; cube_times=""; swarm_fewest=""; cube_fewest=""
for r in $(seq "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then order="swarm cube"; else order="cube swarm"; fi
  for system in $order; do
    if [ "$system" = swarm ]; then
      read -r s f samples < <(swarm_run "$REPLICAS")
      swarm_times="$swarm_times $s"; swarm_fewest="$swarm_fewest $f"
    else
      read -r s f < <(cube_run "$REPLICAS")
      cube_times="$cube_times $s"; cube_fewest="$cube_fewest $f"
    fi
    printf '  run %s  %-5s %8.2f s, fewest healthy %s of %s\n' "$r" "$system" "$s" "$f" "$REPLICAS"
  done
done
sm=$(echo "$swarm_times" | median)
cm=$(echo "$cube_times" | median)
ratio=$(awk -v c="$cm" -v s="$sm" 'BEGIN { printf "%.3f", (s > 0 ? c / s : 0) }')
printf '  Swarm median %.2f s, Cube median %.2f s, ratio Cube/Swarm %s\n' "$sm" "$cm" "$ratio"
engine=$(d version --format '{{.Server.Version}}')
printf '{"bench": "swarm-rollout", "engine": "%s", "replicas": %s, "parallel": 2, "runs": %s, "swarm_s": [%s], "cube_s": [%s], "swarm_fewest_healthy": [%s], "cube_fewest_healthy": [%s], "swarm_median_s": %s, "cube_median_s": %s, "ratio": %s, "finished_at": "%s"}\n' \
  "$engine" "$REPLICAS" "$RUNS" "$(json_list "$swarm_times")" "$(json_list "$cube_times")" \
  "$(json_list "$swarm_fewest")" "$(json_list "$cube_fewest")" "$sm" "$cm" "$ratio" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$JSON"
echo "bench-swarm-rollout: results written to $JSON"
