#!/usr/bin/env bash
# Benchmark of issue 16: process start. `agent version` (prints the build's version; no engine, no file) vs
# `docker version --format '{{.Client.Version}}'` of each docker CLI found (/usr/bin/docker, docker 20.10, and
# /usr/local/bin/docker, docker 28), pointed at a socket that does not exist (docker asks the server anyway:
# the connection fails at once, so only the client's start and that refused connect are timed). Interleaved
# runs, $BENCH_REPS (default 31) each; median wall time, and median user+system CPU time (GNU time, 10 ms
# resolution). With valgrind, the instructions of one run of each (callgrind; independent of the machine's load).
# Goal: agent faster than docker. BENCH_ROWS: a file the table row is appended to (bench/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${BENCH_REPS:-31}
work=$(mktemp -d /tmp/sawmill-start.XXXXXX)
trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 go build -o "$work/agent" ./cmd/agent
export DOCKER_HOST=unix://$work/no-such.sock
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
dockers=()
for d in /usr/bin/docker /usr/local/bin/docker; do [ -x "$d" ] && dockers+=("$d"); done
[ "${#dockers[@]}" -gt 0 ] || { echo "process-start: no docker CLI found" >&2; exit 1; }
load0=$(cut -d' ' -f1-3 /proc/loadavg)

# $EPOCHREALTIME (bash 5, microseconds) is read without a fork: a `date` on each side added ~1 ms to each run.
wall_us() { local s e; s=${EPOCHREALTIME/./}; "$@" >/dev/null 2>&1 || true; e=${EPOCHREALTIME/./}; echo $((e - s)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A wall
for ((i = 0; i < REPS; i++)); do
  wall[agent]+="$(wall_us "$work/agent" version) "
  for d in "${dockers[@]}"; do wall[$d]+="$(wall_us "$d" version --format '{{.Client.Version}}') "; done
done
ms() { awk -v u="$1" 'BEGIN {printf "%.1f ms", u / 1000}'; }
med() { tr ' ' '\n' <<<"${wall[$1]}" | grep . | median; }
a=$(med agent)
instr() { # instructions of one run (callgrind), or "-"
  if [ "${BENCH_CALLGRIND:-1}" = 1 ] && command -v valgrind >/dev/null; then
    GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null |
      awk '/Collected :/ {printf "%.0f M", $NF / 1e6; found = 1} END {if (!found) printf "-"}' || true
  else echo -; fi
}
ai=$(instr "$work/agent" version)
echo "process start: median wall of $REPS interleaved runs; load at start $load0, at end $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
printf '  %-52s %10s   instructions %s\n' "agent version" "$(ms "$a")" "$ai"
best=""
for d in "${dockers[@]}"; do
  v=$("$d" version --format '{{.Client.Version}}' 2>/dev/null | head -1 || true)
  m=$(med "$d")
  di=$(instr "$d" version --format '{{.Client.Version}}')
  printf '  %-52s %10s   instructions %s\n' "$d version --format (docker $v)" "$(ms "$m")" "$di"
  if [ -z "$best" ] || [ "$m" -lt "$best" ]; then best=$m; bestname="docker $v"; besti=$di; fi
done
verdict=$(awk -v a="$a" -v d="$best" 'BEGIN { if (a < d) print "met"; else print "not met" }')
ratio=$(awk -v a="$a" -v d="$best" 'BEGIN { printf "%.2f", a / d }')
echo "  agent / fastest docker: $ratio (goal < 1: $verdict)"
if [ -n "${BENCH_ROWS:-}" ]; then
  printf 'process start (agent version)\t%s version: %s (%s instr.)\t%s (%s instr.)\tfaster\t%s (%sx; load %s)\n' \
    "$bestname" "$(ms "$best")" "$besti" "$(ms "$a")" "$ai" "$verdict" "$ratio" "$load0" >>"$BENCH_ROWS"
fi
