#!/usr/bin/env bash
# Benchmark of issue 16: the daemon's no-op cycle (`agent run`) on a release of $BENCH_SERVICES (default 50)
# services, beside the bare Docker API calls such a cycle needs (the four list calls) timed through the same
# socket in the same run; the API calls per cycle (counted by a proxy in front of the engine); RSS and
# goroutines after $BENCH_CYCLES no-op cycles (default 100,1000); BENCH_LEASE=false runs the daemon without its
# lease (the cycle without the lease's two calls). See bench/agentcycle/main.go.
#
# Engine: $SAWMILL_TEST_DOCKER_HOST, else the private swarm-mode dockerd of hack/dockerd.sh. No registry is
# contacted: the workload image (a FROM scratch static testsvc) is built locally, as bench/agent-apply.sh does.
# The stack (sawbench-cycle-*) and the daemon's lease config are removed at the end.
# BENCH_ROWS: a file the table rows are appended to (bench/run.sh). Exit 0 when the benchmark ran.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DOCKER_HOST=${SAWMILL_TEST_DOCKER_HOST:-$(hack/dockerd.sh start)}
export DOCKER_HOST SAWMILL_TEST_DOCKER_HOST=$DOCKER_HOST
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
IMAGE=sawmill-bench/svc:1
work=$(mktemp -d /tmp/sawmill-cycle.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/agent" ./cmd/agent
go build -o "$work/agentcycle" ./bench/agentcycle
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  mkdir -p "$work/img"
  CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/img/testsvc" ./internal/testing/testenv/testsvc
  printf 'FROM scratch\nCOPY testsvc /testsvc\nENTRYPOINT ["/testsvc"]\n' >"$work/img/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$work/img" >/dev/null 2>"$work/build.log" || { cat "$work/build.log"; exit 1; }
fi
args=(-agent "$work/agent" -services "${BENCH_SERVICES:-50}" -image "$IMAGE" -cycles "${BENCH_CYCLES:-100,1000}" -lease="${BENCH_LEASE:-true}")
[ -n "${BENCH_ROWS:-}" ] && args+=(-row "$BENCH_ROWS")
[ -n "${BENCH_GOGC:-}" ] && args+=(-gogc "$BENCH_GOGC")
"$work/agentcycle" "${args[@]}"
