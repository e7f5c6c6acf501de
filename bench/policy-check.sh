#!/usr/bin/env bash
# Benchmark of issue 5: `agent check` on a generated compose file of $BENCH_SERVICES (default 100) services vs
# `conftest test` on the rendered input document (`agent render`) with the same policies (policies/), in the same
# run. No Docker and no network: both tools only read files.
#
# What is measured (wall time, milliseconds, median of $BENCH_REPS runs each, alternating agent/conftest so a
# drift in the machine's load hits both alike):
#   agent:    `agent check -c compose.yaml -o json` : process start, compose load and conversion, input document,
#             policy compile and prepare, evaluation, report. The whole job.
#   conftest: `conftest test --policy policies/ --output json stack.json` : process start, policy load and
#             compile, evaluation of the already rendered document (the compose work is not in its time, which
#             favours conftest).
#   agent render: `agent render -c compose.yaml`: the same process start and compose load without the policies;
#             check - render is what the policies add to the agent's time.
#   per-service evaluation: the engine alone on the same 100 services (go test -bench BenchmarkEvaluate100 in
#             internal/policy: input conversion + one prepared query), reported in microseconds per service.
# The two tools must agree on the number of denies and warnings (checked), otherwise the comparison is void.
# Goal (issue 5): agent faster than conftest (ratio conftest/agent > 1).
#
# Needs conftest: go install github.com/open-policy-agent/conftest@v0.71.1 (found on PATH or in $(go env GOPATH)/bin).
# Exit 0 when the benchmark ran (goal met or not), non-zero on errors.
set -euo pipefail

N=${BENCH_SERVICES:-100}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
REPS=${BENCH_REPS:-9}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "[policy-check] $*" >&2; }

conftest=$(command -v conftest || true)
[ -n "$conftest" ] || conftest="$(go env GOPATH)/bin/conftest"
if [ ! -x "$conftest" ]; then
  log "ERROR: conftest not found: go install github.com/open-policy-agent/conftest@v0.71.1"
  exit 1
fi

work=$(mktemp -d /tmp/sawmill-policy-bench.XXXXXX)
[ -n "${BENCH_KEEP:-}" ] && log "keeping $work" || trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 go build -o "$work/agent" ./cmd/agent

# The stack: N services; every fifth breaks something (no digest pin, a published port, a plain password,
# privileged, no limits), the others are compliant.
pin=@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
{
  echo "name: bench"
  echo "services:"
  for i in $(seq 1 "$N"); do
    img="registry.example/bench/svc$i:1$pin"
    extra=""
    case $((i % 5)) in
      0) img="registry.example/bench/svc$i:1" ;;
      1) extra="    ports: [\"$((20000 + i)):8080\"]" ;;
      2) extra=$'    privileged: true\n    environment:\n      DB_PASSWORD: plain' ;;
    esac
    cat <<YAML
  svc$i:
    image: $img
$extra
    secrets: [token]
    healthcheck: {test: ["CMD", "/probe"], interval: 2s, retries: 3}
    deploy:
      labels: {team: bench}
      resources: {limits: {cpus: "0.25", memory: 64M}}
      restart_policy: {condition: on-failure}
      update_config: {failure_action: rollback, monitor: 10s}
YAML
  done
  echo "secrets:"
  echo "  token:"
  echo "    file: ./token.txt"
} | grep -v '^$' >"$work/compose.yaml"
echo "t0ken" >"$work/token.txt"

"$work/agent" render -c "$work/compose.yaml" >"$work/stack.json"

median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
# Timed with $EPOCHREALTIME (bash 5, microseconds), read without a fork on either side of the timed command.

agent_ms=()
cached_ms=()
conftest_ms=()
render_ms=()
"$work/agent" check -c "$work/compose.yaml" -o json --cache-dir "$work/cache" >/dev/null 2>&1 || true # fills the cache
for r in $(seq 1 "$REPS"); do
  t=${EPOCHREALTIME/./}
  set +e
  "$work/agent" check -c "$work/compose.yaml" -o json --cache-dir "$work/cache" >"$work/agent-cached.json" 2>/dev/null
  ac=$?
  set -e
  cached_ms+=($(((${EPOCHREALTIME/./} - t) / 1000)))
  [ "$ac" -eq 3 ] || { log "ERROR: agent check --cache-dir exited $ac (want 3)"; exit 1; }
  cmp -s "$work/agent-cached.json" "$work/agent.json" 2>/dev/null || [ "$r" = 1 ] || { log "ERROR: agent check --cache-dir printed another report"; exit 1; }
  t=${EPOCHREALTIME/./}
  "$work/agent" render -c "$work/compose.yaml" >/dev/null
  render_ms+=($(((${EPOCHREALTIME/./} - t) / 1000)))
  t=${EPOCHREALTIME/./}
  set +e
  "$work/agent" check -c "$work/compose.yaml" -o json >"$work/agent.json" 2>/dev/null
  ac=$?
  set -e
  agent_ms+=($(((${EPOCHREALTIME/./} - t) / 1000)))
  [ "$ac" -eq 3 ] || { log "ERROR: agent check exited $ac (want 3: the stack has denies)"; exit 1; }
  t=${EPOCHREALTIME/./}
  set +e
  "$conftest" test --no-color --output json --policy policies "$work/stack.json" >"$work/ct-out.json" 2>/dev/null
  cc=$?
  set -e
  conftest_ms+=($(((${EPOCHREALTIME/./} - t) / 1000)))
  [ "$cc" -eq 1 ] || { log "ERROR: conftest exited $cc (want 1: failures)"; exit 1; }
done

counts=$(python3 - "$work/agent.json" "$work/ct-out.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))[0]
ad = sum(1 for d in a["decisions"] if d["kind"] == "deny")
aw = sum(1 for d in a["decisions"] if d["kind"] == "warn")
print(ad, aw, len(c.get("failures") or []), len(c.get("warnings") or []))
PY
)
read -r ad aw cd cw <<<"$counts"
[ "$ad" = "$cd" ] && [ "$aw" = "$cw" ] || { log "ERROR: decisions differ: agent $ad denies/$aw warnings, conftest $cd/$cw"; exit 1; }

am=$(printf '%s\n' "${agent_ms[@]}" | median)
acm=$(printf '%s\n' "${cached_ms[@]}" | median)
cmp -s "$work/agent-cached.json" "$work/agent.json" || { log "ERROR: agent check --cache-dir printed another report"; exit 1; }
cm=$(printf '%s\n' "${conftest_ms[@]}" | median)
rm_=$(printf '%s\n' "${render_ms[@]}" | median)
per=$(go test -run '^$' -bench BenchmarkEvaluate100 -benchtime 20x ./internal/policy/ 2>/dev/null | awk '/BenchmarkEvaluate100/ {for (i=1;i<=NF;i++) if ($(i) ~ /service/) print $(i-1)}')

echo "policy check, $N services, $REPS runs each (median wall ms), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  decisions (both tools):            $ad denies, $aw warnings"
echo "  agent check (compose -> decisions): ${am} ms   runs: ${agent_ms[*]}"
echo "  agent check --cache-dir (warm):     ${acm} ms   runs: ${cached_ms[*]}"
echo "  conftest test (rendered document):  ${cm} ms   runs: ${conftest_ms[*]}"
echo "  agent render (compose -> document):  ${rm_} ms   runs: ${render_ms[*]}"
awk -v a="$am" -v c="$cm" 'BEGIN { printf "  ratio conftest/agent:               %.2f (goal > 1: agent faster)\n", c / a }'
awk -v a="$acm" -v c="$cm" 'BEGIN { printf "  ratio conftest/agent --cache-dir:   %.2f\n", c / a }'
awk -v a="$am" -v r="$rm_" -v c="$cm" 'BEGIN { d = a - r; if (d < 1) d = 1; printf "  policy share of agent check:        %d ms (check - render); conftest / that: %.1f\n", d, c / d }'
awk -v a="$am" -v n="$N" 'BEGIN { printf "  agent check per service:            %.2f ms (whole command / services)\n", a / n }'
echo "  engine evaluation per service:      ${per:-?} us (BenchmarkEvaluate100)"
# Instructions of one run of each (callgrind; independent of the machine's load), when valgrind is there.
ai=- ci=-
if [ "${BENCH_CALLGRIND:-1}" = 1 ] && command -v valgrind >/dev/null; then
  instr() { GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null | awk '/Collected :/ {printf "%.0f M", $NF / 1e6}' || true; }
  CGO_ENABLED=0 go build -o "$work/agent-static" ./cmd/agent # callgrind and cgo's signal masks do not mix
  ai=$(instr "$work/agent-static" check -c "$work/compose.yaml" -o json)
  ci=$(instr "$conftest" test --no-color --output json --policy policies "$work/stack.json")
  echo "  instructions (callgrind, one run):  agent check $ai, conftest test $ci"
fi
if [ -n "${BENCH_ROWS:-}" ]; then
  v=$(awk -v a="$am" -v c="$cm" 'BEGIN { if (a < c) print "met"; else print "not met" }')
  vc=$(awk -v a="$acm" -v c="$cm" 'BEGIN { if (a < c) print "met"; else print "not met" }')
  r=$(awk -v a="$am" -v c="$cm" 'BEGIN { printf "%.2f", a / c }')
  rc=$(awk -v a="$acm" -v c="$cm" 'BEGIN { printf "%.2f", a / c }')
  printf 'agent check, %s services\tconftest test (rendered input): %s ms (%s instr.)\t%s ms (%s instr.); --cache-dir warm %s ms\tratio < 1.0\tcold %s (%s), warm cache %s (%s); load %s\n' \
    "$N" "$cm" "$ci" "$am" "$ai" "$acm" "$v" "$r" "$vc" "$rc" "$LOAD0" >>"$BENCH_ROWS"
fi
