#!/usr/bin/env bash
# Runs every benchmark bench/*.sh (except this file) one after the other against the test engine
# ($SAWMILL_TEST_DOCKER_HOST, else the private dockerd of hack/dockerd.sh), then prints one table: every goal
# of the benchmarks (issue 16's table), the peer's figure and ours from this run, and the machine's load (at
# the start of each benchmark, and of the whole run). Exits non-zero if any benchmark failed.
# `make bench` calls it; docs/benchmarks.md keeps the latest table.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${SAWMILL_TEST_DOCKER_HOST:-}" ]; then
  SAWMILL_TEST_DOCKER_HOST=$(hack/dockerd.sh start) || exit 1
fi
export SAWMILL_TEST_DOCKER_HOST
BENCH_ROWS=$(mktemp /tmp/sawmill-bench-rows.XXXXXX)
export BENCH_ROWS
trap 'rm -f "$BENCH_ROWS"' EXIT
load0=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date -u +%Y-%m-%dT%H:%MZ)
failed=()
# Before each benchmark, wait for a quiet machine (bench/lib/settle.sh): the first deploys leave the engine
# busy for a minute or more, and a benchmark started then measures that, not the tools.
. bench/lib/settle.sh
for b in bench/*.sh; do
  [ "$(basename "$b")" = run.sh ] && continue
  quiet=$(settle)
  echo "=== $b ($quiet)"
  if ! bash "$b"; then
    echo "=== FAILED: $b"
    failed+=("$b")
  fi
done
echo
echo "=== summary: $(nproc) cores; started $start, load average $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
{
  printf 'measure\tpeer (same run)\tours\tgoal\tverdict (ratio; load at its start)\n'
  # the issue's order
  for m in 'agent apply no-op' 'agent check' 'agent apply first deploy' 'agent run no-op cycle' 'agent run idle' 'pipegen generate' 'process start'; do
    grep -F "$m" "$BENCH_ROWS" || printf '%s\t-\tnot measured\t-\t(benchmark failed or skipped)\n' "$m"
  done
} | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5; if (NR == 1) print "|---|---|---|---|---|" }'
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed benchmarks: ${failed[*]}"
  exit 1
fi
