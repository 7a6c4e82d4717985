#!/usr/bin/env bash
# Makes sure a Docker Engine answers on this machine, starting the local daemon if none does.
#
# CI machines boot with the engine installed but not always running (a session's processes,
# the daemon included, may be gone by the time CI starts), so .ci/run calls this before the
# tests. It starts /usr/sbin/dockerd in the background (it launches its own containerd) and
# waits for `docker info` with a deadline, printing progress. Nothing is done when an engine
# already answers, including a remote one named by DOCKER_HOST.
#
# Usage: scripts/ensure-docker.sh [timeout-seconds]   (default 90)
set -euo pipefail

timeout=${1:-90}
log=/var/log/dockerd.log

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if docker info >/dev/null 2>&1; then
  echo "docker engine answers"
  exit 0
fi

if [ -n "${DOCKER_HOST:-}" ]; then
  echo "error: DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local daemon" >&2
  exit 1
fi

dockerd=$(command -v dockerd || true)
if [ -z "$dockerd" ]; then
  echo "error: no Docker engine answers and dockerd is not installed" >&2
  exit 1
fi

if pgrep -x dockerd >/dev/null 2>&1; then
  echo "dockerd is running but does not answer yet; waiting"
else
  echo "starting $dockerd (log: $log)"
  # A stale pid file from a daemon that died with the machine stops a new one from starting.
  sudo_if_needed rm -f /var/run/docker.pid
  sudo_if_needed sh -c "nohup '$dockerd' >> '$log' 2>&1 &"
fi

deadline=$((SECONDS + timeout))
until docker info >/dev/null 2>&1; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: the Docker engine did not answer within ${timeout}s; last lines of $log:" >&2
    sudo_if_needed tail -n 30 "$log" >&2 || true
    exit 1
  fi
  sleep 1
  echo "  waiting for the Docker engine ($((deadline - SECONDS))s left)"
done
echo "docker engine answers after $((SECONDS))s"
