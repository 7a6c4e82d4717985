# Shared by scripts/bench-swarm.sh and scripts/bench-swarm-rollout.sh (sourced, not run):
# bounded engine calls, the checks that must pass before touching the engine, and the cleanup
# that puts it back as it was found. The caller sets NAME (for messages), SERVICE (the Swarm
# service it creates), IMAGE and CUBE_BENCH first; `swarm_preflight` then records the engine's
# state and installs `swarm_restore` as the EXIT trap.

# Every engine call is bounded: if the engine stops answering, say so instead of hanging.
d() { timeout 300 docker "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END {
  if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
json_list() { echo "$1" | awk '{ for (i = 1; i <= NF; i++) printf "%s%s", (i > 1 ? ", " : ""), $i }'; }

service_containers() { d ps "$@" -q --filter "label=com.docker.swarm.service.name=$SERVICE"; }

# Refuses to run unless the engine answers, the image and the benchmark tool are there, and the
# engine is not in swarm mode already (we never touch a swarm we did not create).
swarm_preflight() {
  if ! d info >/dev/null 2>&1; then
    echo "$NAME: no Docker engine answers" >&2
    exit 2
  fi
  if ! d image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$NAME: image $IMAGE missing: run scripts/build-test-image.sh" >&2
    exit 2
  fi
  if [ ! -x "$CUBE_BENCH" ]; then
    echo "$NAME: $CUBE_BENCH missing: cargo build --release -p cube -p cube-bench" >&2
    exit 2
  fi
  local state
  state=$(d info --format '{{.Swarm.LocalNodeState}}')
  if [ "$state" != "inactive" ]; then
    echo "$NAME: this engine is already in swarm mode ($state); refusing to touch it" >&2
    exit 2
  fi
  gwbridge_before=$(d network ls -q --filter name='^docker_gwbridge$')
  trap swarm_restore EXIT
  trap 'exit 130' INT TERM
}

# Scales the service down ten at a time (a burst of dozens of container removals is hard on
# Docker 20.10), then removes it and waits until its containers are gone.
remove_service() {
  d service inspect "$SERVICE" >/dev/null 2>&1 || return 0
  local n
  n=$(service_containers | wc -l)
  while [ "$n" -gt 0 ]; do
    n=$(( n > 10 ? n - 10 : 0 ))
    d service scale --detach "$SERVICE=$n" >/dev/null 2>&1 || break
    for _ in $(seq 300); do
      [ "$(service_containers | wc -l)" -le "$n" ] && break
      sleep 0.1
    done
  done
  d service rm "$SERVICE" >/dev/null 2>&1 || true
  for _ in $(seq 600); do
    [ -z "$(service_containers -a)" ] && break
    sleep 0.1
  done
}

# Puts the engine back as it was found. Safe to call more than once.
swarm_restore() {
  if [ -n "${sampler_pid:-}" ]; then kill "$sampler_pid" 2>/dev/null || true; sampler_pid=""; fi
  if [ "$(d info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = "active" ]; then
    remove_service
    d swarm leave --force >/dev/null 2>&1 || true
  fi
  local left
  left=$(service_containers -a 2>/dev/null || true)
  if [ -n "$left" ]; then
    echo "$left" | xargs -n 5 timeout 120 docker rm -f >/dev/null 2>&1 || true
  fi
  if [ -z "$gwbridge_before" ] && [ -n "$(d network ls -q --filter name='^docker_gwbridge$' 2>/dev/null)" ]; then
    d network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
}

# Does swarm mode work here at all? Tries once and, if not, writes why to $JSON and exits 3.
swarm_probe() {
  local probe reason
  if ! probe=$(d swarm init --advertise-addr 127.0.0.1 2>&1); then
    echo "$NAME: BLOCKED: swarm mode does not work on this engine: $probe" >&2
    reason=$(printf '%s' "$probe" | tr '\n"\\' '   ')
    printf '{"bench": "%s", "blocked": "%s"}\n' "$1" "$reason" > "$JSON"
    exit 3
  fi
}
