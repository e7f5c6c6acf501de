#!/usr/bin/env bash
# Starts (or reuses) a private dockerd in swarm mode for the tests and the demo.
# It never touches the developer's own engine: its own data root, exec root, pid file and socket live in
# $SAWMILL_DOCKERD_DIR (default /tmp/sawmill-dockerd).
#   hack/dockerd.sh start   start it if it is not answering; prints the DOCKER_HOST to use
#   hack/dockerd.sh stop    stop it (its data root stays, so the next start is fast)
#   hack/dockerd.sh env     prints the DOCKER_HOST line only
set -euo pipefail
dir=${SAWMILL_DOCKERD_DIR:-/tmp/sawmill-dockerd}
sock=$dir/docker.sock
host=unix://$sock

answering() { DOCKER_HOST=$host docker info >/dev/null 2>&1; }

case "${1:-start}" in
start)
  mkdir -p "$dir"
  if ! answering; then
    command -v dockerd >/dev/null || { echo "dockerd not found: apt-get install -y docker.io" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "dockerd needs root" >&2; exit 1; }
    rm -f "$sock"
    # setsid: the engine outlives the shell that started it.
    setsid dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
      -H "$host" >"$dir/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do answering && break; sleep 0.5; done
    answering || { echo "dockerd did not start; see $dir/dockerd.log" >&2; tail -20 "$dir/dockerd.log" >&2; exit 1; }
  fi
  # An engine restarted on a data root that holds a swarm rejoins it (pending, then active): wait for that;
  # only an engine in no swarm is initialised.
  for _ in $(seq 1 60); do
    state=$(DOCKER_HOST=$host docker info --format '{{.Swarm.LocalNodeState}}')
    [ "$state" = pending ] || break
    sleep 0.5
  done
  case "$state" in
  active) ;;
  inactive) DOCKER_HOST=$host docker swarm init --advertise-addr 127.0.0.1 >/dev/null ;;
  *) echo "the private engine's swarm is $state; see $dir/dockerd.log (hack/dockerd.sh stop, rm -rf $dir to start over)" >&2; exit 1 ;;
  esac
  ctl=$(DOCKER_HOST=$host docker info --format '{{.Swarm.ControlAvailable}}')
  for _ in $(seq 1 60); do
    [ "$ctl" = true ] && break
    sleep 0.5
    ctl=$(DOCKER_HOST=$host docker info --format '{{.Swarm.ControlAvailable}}')
  done
  echo "$host"
  ;;
stop)
  if [ -f "$dir/dockerd.pid" ]; then kill "$(cat "$dir/dockerd.pid")" 2>/dev/null || true; fi
  ;;
env)
  echo "$host"
  ;;
*) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
