#!/usr/bin/env bash
# Benchmark of issue 2: `agent apply` vs `docker stack deploy -c`, measured in one run on the same engine.
#
# Engine: $SAWMILL_TEST_DOCKER_HOST, else the private swarm-mode dockerd of hack/dockerd.sh (started or reused).
# No other engine is touched. No registry is contacted: the workload image (a FROM scratch static testsvc) is
# built locally; docker stack deploy runs with --resolve-image never and the agent never queries a registry.
#
# The stack: $BENCH_SERVICES (default 50) services, 1 replica each, deploy.endpoint_mode dnsrr (no IPVS on the
# test kernels), one overlay network, 2 secrets and 2 configs (from files) used by some of the services.
# The tools never run at the same time; each deploys its own stack (sawbench-docker, sawbench-agent) on an engine
# that holds neither, and the stack is removed (`docker stack rm`, waiting until its containers, networks,
# secrets and configs are gone) before the next deploy. $BENCH_FIRST_REPS (default 2) first deploys per tool run
# in ABBA order (docker, agent, agent, docker) so that a drift in the machine's load hits both alike; the first
# round of each tool is followed by $BENCH_NOOP_REPS (default 9) no-op re-deploys. Rounds after the first two are
# skipped when the time budget would not hold them. Medians are reported.
#
# What is measured (wall time, milliseconds):
#   first deploy, docker: `docker stack deploy -c FILE --resolve-image never STACK` plus polling
#                         `docker service ls --format {{.Replicas}}` (every ~0.2 s) until all services show
#                         1/1 tasks running. The poll adds at most one poll period to docker's time.
#                         Also reported: the time until each of docker's tasks has run for 5 s (Swarm's default
#                         update monitor), the agent's own convergence rule for a task without a healthcheck
#                         and the rule `docker stack deploy --detach=false` applies service after service
#                         (the newest task start, from the tasks' status timestamps, plus 5 s).
#   first deploy, agent:  `agent apply -c FILE STACK`, which itself waits until every task of every service runs
#                         (exit 0 = converged). Afterwards (not timed) the same replica poll must pass.
#   no-op, docker:        the `docker stack deploy` command alone (it returns once its service updates were
#                         submitted; the specs are unchanged so nothing restarts). No convergence poll is added,
#                         which favours docker.
#   no-op, agent:         `agent apply` of the same file again (process start, compose load, observe, plan;
#                         with nothing to write it returns without waiting).
#   both tools deploy the same unsigned local image: the agent runs with --skip-verify and --policy-mode=off,
#                         since docker stack deploy checks neither.
#   no-op writes:         Version.Index of every service, secret and config of the stack plus the network IDs,
#                         compared before and after each no-op; every object whose line changed, appeared or
#                         disappeared counts as a write. The agent's info log lines "... created/updated/removed"
#                         are counted as well. Both must be 0 for the agent (docker is shown for reference).
# Goals (issue 2): first deploy agent/docker <= 1.0; no-op docker/agent >= 5; zero writes on the agent's no-op.
# Controls: docker's no-op must show writes (its service updates bump Version.Index) and the agent's first
# deploy must show its creations in the log, otherwise the counting is broken. Medians are reported.
#
# Exit 0 when the benchmark ran (goals met or not), non-zero on errors. Stops itself within ~10 minutes.
set -euo pipefail

N=${BENCH_SERVICES:-50}
REPS=${BENCH_NOOP_REPS:-9}
FIRST_REPS=${BENCH_FIRST_REPS:-2} # first deploys per tool, in ABBA order
BUDGET=${BENCH_BUDGET_SECONDS:-570} # the whole run, cleanup included
DOCKER_STACK=sawbench-docker
AGENT_STACK=sawbench-agent
IMAGE=sawmill-bench/svc:1

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
START=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

DOCKER_HOST=${SAWMILL_TEST_DOCKER_HOST:-$(hack/dockerd.sh start)}
export DOCKER_HOST
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH

log() { echo "[agent-apply] $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
now_ms() { date +%s%3N; }
# The no-ops follow a first deploy whose 50 tasks keep the engine (and the 2 cores) busy for a minute or more:
# each series starts on a quiet machine (bench/lib/settle.sh), for both tools alike.
. "$root/bench/lib/settle.sh"
# The no-ops are timed with $EPOCHREALTIME (bash 5, microseconds), read without a fork: a `date` on each side
# added 1-2 ms to every run of either tool, which weighs on the 5x ratio of a ~30 ms command.
left() { echo $((BUDGET - ($(date +%s) - START))); }
# deadline_for SECONDS: SECONDS, capped so that the run keeps ~90 s for cleanup.
deadline_for() {
  local l=$(($(left) - 90))
  [ "$l" -gt 5 ] || die "time budget (${BUDGET}s) used up"
  if [ "$1" -lt "$l" ]; then echo "$1"; else echo "$l"; fi
}

docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null | grep -qx true ||
  die "$DOCKER_HOST is not a swarm manager (hack/dockerd.sh start makes one)"

work=$(mktemp -d /tmp/sawmill-bench.XXXXXX)

# --- cleanup: remove both stacks and wait until their services, containers and networks are gone ------------
stack_gone() { # stack
  [ -z "$(docker service ls -q --filter "label=com.docker.stack.namespace=$1")" ] &&
    [ -z "$(docker ps -aq --filter "name=$1_")" ] &&
    [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$1")" ] &&
    [ -z "$(docker network ls -q --filter "name=$1_")" ] &&
    [ -z "$(docker secret ls -q --filter "name=$1_")" ] &&
    [ -z "$(docker config ls -q --filter "name=$1_")" ]
}
remove_stack() { # stack [seconds]
  local s=$1 wait=${2:-120} t
  stack_gone "$s" && return 0
  docker stack rm "$s" >/dev/null 2>&1 || true
  t=$(($(date +%s) + wait))
  while [ "$(date +%s)" -lt "$t" ]; do
    # objects the stack label did not catch (none expected)
    docker service ls -q --filter "name=${s}_" | xargs -r docker service rm >/dev/null 2>&1 || true
    if [ -z "$(docker service ls -q --filter "name=${s}_")" ]; then
      docker secret ls -q --filter "name=${s}_" | xargs -r docker secret rm >/dev/null 2>&1 || true
      docker config ls -q --filter "name=${s}_" | xargs -r docker config rm >/dev/null 2>&1 || true
      if [ -z "$(docker ps -aq --filter "name=${s}_")" ]; then
        docker network ls -q --filter "name=${s}_" | xargs -r docker network rm >/dev/null 2>&1 || true
      fi
    fi
    stack_gone "$s" && return 0
    sleep 1
  done
  log "stack $s not fully removed after ${wait}s"
  return 1
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  remove_stack "$DOCKER_STACK" 90 || rc=1
  remove_stack "$AGENT_STACK" 90 || rc=1
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of an interrupted earlier run.
remove_stack "$DOCKER_STACK" 90 || die "could not remove leftover stack $DOCKER_STACK"
remove_stack "$AGENT_STACK" 90 || die "could not remove leftover stack $AGENT_STACK"

# --- build: agent, workload image, compose file --------------------------------------------------------------
log "building agent and the workload image"
mkdir -p "$work/img"
go build -o "$work/agent" ./cmd/agent
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/img/testsvc" ./internal/testing/testenv/testsvc
printf 'FROM scratch\nCOPY testsvc /testsvc\nENTRYPOINT ["/testsvc"]\n' >"$work/img/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$work/img" >/dev/null 2>"$work/build.log" ||
  die "docker build failed: $(cat "$work/build.log")"

mkdir -p "$work/stack"
compose=$work/stack/compose.yaml
for i in 1 2; do
  echo "bench secret $i $(date +%s%N)" >"$work/stack/secret$i.txt"
  echo "bench config $i" >"$work/stack/config$i.txt"
done
{
  echo 'version: "3.8"' # docker 20.10 CLI needs it; compose-go only warns
  echo 'services:'
  for i in $(seq -w 1 "$N"); do
    echo "  svc$i:"
    echo "    image: $IMAGE"
    echo "    environment:"
    echo "      MESSAGE: svc$i"
    echo "    networks: [bench]"
    case $((10#$i % 10)) in
    1) echo "    secrets: [secret1]" ;;
    2) echo "    secrets: [secret2, {source: secret1, target: other}]" ;;
    3) echo "    configs: [{source: config1, target: /config1.txt}]" ;;
    4) echo "    configs: [{source: config2, target: /config2.txt}]" ;;
    esac
    echo "    deploy:"
    echo "      endpoint_mode: dnsrr"
    echo "      replicas: 1"
  done
  echo 'networks:'
  echo '  bench:'
  echo '    driver: overlay'
  echo 'secrets:'
  echo '  secret1: {file: ./secret1.txt}'
  echo '  secret2: {file: ./secret2.txt}'
  echo 'configs:'
  echo '  config1: {file: ./config1.txt}'
  echo '  config2: {file: ./config2.txt}'
} >"$compose"

# --- helpers ----------------------------------------------------------------------------------------------------
# converged STACK: all N services of the stack show 1/1 running tasks.
converged() {
  docker service ls --filter "label=com.docker.stack.namespace=$1" --format '{{.Replicas}}' 2>/dev/null |
    awk -v n="$N" '$1 == "1/1" { ok++ } END { exit !(NR == n && ok == n) }'
}
# wait_converged STACK SECONDS: polls every ~0.2 s.
wait_converged() {
  local t=$(($(date +%s) + $2))
  until converged "$1"; do
    [ "$(date +%s)" -lt "$t" ] || return 1
    sleep 0.2
  done
}
# snapshot STACK: one line per object of the stack; a write changes, adds or removes a line.
snapshot() {
  local s=$1
  {
    docker service ls -q --filter "name=${s}_" | xargs -r docker service inspect --format 'service {{.ID}} {{.Spec.Name}} {{.Version.Index}}'
    docker secret ls -q --filter "name=${s}_" | xargs -r docker secret inspect --format 'secret {{.ID}} {{.Spec.Name}} {{.Version.Index}}'
    docker config ls -q --filter "name=${s}_" | xargs -r docker config inspect --format 'config {{.ID}} {{.Spec.Name}} {{.Version.Index}}'
    docker network ls -q --no-trunc --filter "name=${s}_" | xargs -r docker network inspect --format 'network {{.Id}} {{.Name}} {{.Created}}'
  } | sort
}
# writes BEFORE AFTER: number of objects whose line changed, appeared or disappeared.
writes() { comm -3 "$1" "$2" | awk '{ print $2 }' | sort -u | wc -l; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
ms() { awk -v m="$1" 'BEGIN { if (m >= 10000) printf "%.2f s", m / 1000; else printf "%d ms", m }'; }

# The agent's info log line for each write call (internal/swarm/apply.go).
WRITE_LOG='msg="?(service|network|secret|config) (created|updated|removed)'
not_running() { docker service ls --filter "label=com.docker.stack.namespace=$1" --format '{{.Name}} {{.Replicas}}' | grep -v ' 1/1$' | head -5 | tr '\n' ' '; }

# stable_at STACK: epoch ms at which every running task of the stack has been running for 5 s, Swarm's default
# update monitor: the agent's rule for a task without a healthcheck (internal/swarm/converge.go) and the rule
# of `docker stack deploy --detach=false`, which waits it out service after service (4 services took 22 s).
stable_at() {
  local ids
  ids=$(docker stack ps -q --filter desired-state=running "$1")
  [ -n "$ids" ] || die "no running task in $1"
  local last
  # shellcheck disable=SC2086
  last=$(docker inspect --type task --format '{{.Status.Timestamp.UnixMilli}}' $ids | sort -n | tail -1)
  echo $((last + 5000))
}
# first_docker: prints the wall time of docker's first deploy until converged (the replica poll), and the
# time until its tasks are also stable by the agent's rule (stable_at; never before the poll saw 1/1).
first_docker() {
  local to t0 t1 st
  to=$(deadline_for 240)
  t0=$(now_ms)
  docker stack deploy -c "$compose" --resolve-image never "$DOCKER_STACK" >"$work/docker-deploy.log" 2>&1 ||
    die "docker stack deploy failed: $(tail -5 "$work/docker-deploy.log")"
  wait_converged "$DOCKER_STACK" "$to" || die "docker stack $DOCKER_STACK did not converge within ${to}s: $(not_running "$DOCKER_STACK")"
  t1=$(now_ms)
  st=$(stable_at "$DOCKER_STACK")
  [ "$st" -gt "$t1" ] || st=$t1
  echo "$((t1 - t0)) $((st - t0))"
}
# first_agent: prints the wall time of the agent's first deploy (it waits for convergence itself).
first_agent() {
  local to t0 rc=0
  to=$(deadline_for 240)
  t0=$(now_ms)
  timeout $((to + 10)) "$work/agent" apply -c "$compose" "$AGENT_STACK" --timeout "${to}s" --skip-verify --policy-mode=off >"$work/agent-first.out" 2>"$work/agent-first.log" || rc=$?
  [ "$rc" = 0 ] || die "agent apply -c $compose $AGENT_STACK (first deploy) exited $rc: $(tail -5 "$work/agent-first.log")"
  echo $(($(now_ms) - t0))
  converged "$AGENT_STACK" || die "agent apply exited 0 but not all services of $AGENT_STACK show 1/1 running: $(not_running "$AGENT_STACK")"
}

docker_first=()
docker_stable=()
agent_first=()
docker_noop=()
docker_writes=()
agent_noop=()
agent_cached=()
agent_writes=()
agent_logwrites=()

round_docker() { # with_noop
  log "docker stack deploy: first deploy of $N services"
  local f
  read -r -a f <<<"$(first_docker)"
  docker_first+=("${f[0]}")
  docker_stable+=("${f[1]}")
  log "docker first deploy: $(ms "${docker_first[-1]}"); its tasks stable by the agent's rule: $(ms "${docker_stable[-1]}")"
  if [ "$1" = 1 ]; then
    local r to t0
    log "no-ops start: $(settle)"
    for r in $(seq 1 "$REPS"); do
      snapshot "$DOCKER_STACK" >"$work/before"
      to=$(deadline_for 60)
      t0=${EPOCHREALTIME/./}
      timeout "$to" docker stack deploy -c "$compose" --resolve-image never "$DOCKER_STACK" >"$work/docker-noop.log" 2>&1 ||
        die "docker stack deploy (no-op $r) failed: $(tail -5 "$work/docker-noop.log")"
      docker_noop+=($(((${EPOCHREALTIME/./} - t0) / 1000)))
      snapshot "$DOCKER_STACK" >"$work/after"
      docker_writes+=("$(writes "$work/before" "$work/after")")
      log "docker no-op $r: $(ms "${docker_noop[-1]}"), objects written: ${docker_writes[-1]}"
    done
    converged "$DOCKER_STACK" || log "warning: docker stack not converged after the no-op re-deploys: $(not_running "$DOCKER_STACK")"
    [ "${docker_writes[0]}" -ge "$N" ] ||
      log "warning: docker's no-op changed only ${docker_writes[0]} objects (expected its $N service updates): check the Version.Index snapshot"
  fi
  log "removing $DOCKER_STACK"
  remove_stack "$DOCKER_STACK" 150 || die "could not remove $DOCKER_STACK"
}

round_agent() { # with_noop
  log "agent apply: first deploy of $N services"
  agent_first+=("$(first_agent)")
  log "agent first deploy: $(ms "${agent_first[-1]}")"
  # Control for the write-log count below: the first deploy must show its N service creations.
  local created
  created=$(grep -cE "$WRITE_LOG" "$work/agent-first.log" || true)
  [ "$created" -ge "$N" ] || die "only $created write log lines on the agent's first deploy: the write-log count is broken"
  if [ "$1" = 1 ]; then
    local r to t0 rc
    log "no-ops start: $(settle)"
    for r in $(seq 1 "$REPS"); do
      snapshot "$AGENT_STACK" >"$work/before"
      to=$(deadline_for 60)
      t0=${EPOCHREALTIME/./}
      rc=0
      timeout $((to + 10)) "$work/agent" apply -c "$compose" "$AGENT_STACK" --timeout "${to}s" --skip-verify --policy-mode=off >"$work/agent-noop.out" 2>"$work/agent-noop.log" || rc=$?
      [ "$rc" = 0 ] || die "agent apply (no-op $r) exited $rc: $(tail -5 "$work/agent-noop.log")"
      agent_noop+=($(((${EPOCHREALTIME/./} - t0) / 1000)))
      snapshot "$AGENT_STACK" >"$work/after"
      agent_writes+=("$(writes "$work/before" "$work/after")")
      agent_logwrites+=("$(grep -cE "$WRITE_LOG" "$work/agent-noop.log" || true)")
      log "agent no-op $r: $(ms "${agent_noop[-1]}"), objects written: ${agent_writes[-1]}, write log lines: ${agent_logwrites[-1]}"
    done
    # The same with --cache-dir (filled by one untimed run): the compose load is read from the cache.
    "$work/agent" apply -c "$compose" "$AGENT_STACK" --skip-verify --policy-mode=off --cache-dir "$work/cache" >/dev/null 2>&1 ||
      die "agent apply --cache-dir (filling the cache) failed"
    for r in $(seq 1 "$REPS"); do
      snapshot "$AGENT_STACK" >"$work/before"
      to=$(deadline_for 60)
      t0=${EPOCHREALTIME/./}
      rc=0
      timeout $((to + 10)) "$work/agent" apply -c "$compose" "$AGENT_STACK" --timeout "${to}s" --skip-verify --policy-mode=off --cache-dir "$work/cache" >"$work/agent-noop.out" 2>"$work/agent-noop.log" || rc=$?
      [ "$rc" = 0 ] || die "agent apply --cache-dir (no-op $r) exited $rc: $(tail -5 "$work/agent-noop.log")"
      agent_cached+=($(((${EPOCHREALTIME/./} - t0) / 1000)))
      snapshot "$AGENT_STACK" >"$work/after"
      agent_writes+=("$(writes "$work/before" "$work/after")")
      agent_logwrites+=("$(grep -cE "$WRITE_LOG" "$work/agent-noop.log" || true)")
      log "agent no-op --cache-dir $r: $(ms "${agent_cached[-1]}"), objects written: ${agent_writes[-1]}"
    done
  fi
  log "removing $AGENT_STACK"
  remove_stack "$AGENT_STACK" 150 || die "could not remove $AGENT_STACK"
}

# Rounds in ABBA order (docker, agent, agent, docker, ...) so that a drift of the machine's load affects both
# tools alike; the no-ops run in the first round of each tool. A round after the first two is skipped when the
# remaining time budget might not hold it.
for ((k = 0; k < FIRST_REPS; k++)); do
  if [ "$k" -gt 0 ] && [ "$(left)" -lt $((2 * ${round_secs:-120} + 90)) ]; then
    log "time budget: skipping the remaining first-deploy repetitions ($k of $FIRST_REPS done)"
    break
  fi
  rs=$(date +%s)
  noop=0
  [ "$k" = 0 ] && noop=1
  if [ $((k % 2)) = 0 ]; then
    round_docker $noop
    round_agent $noop
  else
    round_agent $noop
    round_docker $noop
  fi
  round_secs=$((($(date +%s) - rs) / 2))
done

# --- report -----------------------------------------------------------------------------------------------------------
d_first=$(median "${docker_first[@]}")
a_first=$(median "${agent_first[@]}")
d_noop=$(median "${docker_noop[@]}")
a_noop=$(median "${agent_noop[@]}")
a_cached=$(median "${agent_cached[@]}")
a_w=0
a_lw=0
for w in "${agent_writes[@]}"; do if [ "$w" -gt "$a_w" ]; then a_w=$w; fi; done
for w in "${agent_logwrites[@]}"; do if [ "$w" -gt "$a_lw" ]; then a_lw=$w; fi; done
d_w=$(median "${docker_writes[@]}")
d_stable=$(median "${docker_stable[@]}")
first_ratio=$(awk -v a="$a_first" -v d="$d_first" 'BEGIN { printf "%.3f", a / d }')
stable_ratio=$(awk -v a="$a_first" -v d="$d_stable" 'BEGIN { printf "%.3f", a / d }')
noop_ratio=$(awk -v a="$a_noop" -v d="$d_noop" 'BEGIN { printf "%.1f", (a > 0 ? d / a : 0) }')
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "not met"; fi; }
first_v=$(verdict "$a_first <= $d_first")
stable_v=$(verdict "$a_first <= $d_stable")
noop_v=$(verdict "$d_noop >= 5 * $a_noop")
cached_v=$(verdict "$d_noop >= 5 * $a_cached")
cached_ratio=$(awk -v a="$a_cached" -v d="$d_noop" 'BEGIN { printf "%.1f", (a > 0 ? d / a : 0) }')
writes_v=$(verdict "$a_w == 0 && $a_lw == 0")

echo
echo "agent apply vs docker stack deploy: $N services x 1 replica, 1 overlay network, 2 secrets, 2 configs"
echo "engine $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST; docker CLI $(docker version --format '{{.Client.Version}}'); $(nproc) cores; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-30s %10s %10s %-20s %s\n' measure docker agent ratio goal
printf '%-30s %10s %10s %-20s %s\n' "first deploy until converged" "$(ms "$d_first")" "$(ms "$a_first")" "agent/docker $first_ratio" "<= 1.0: $first_v (median of ${#agent_first[@]})"
printf '%-30s %10s %10s %-20s %s\n' "first deploy, tasks up 5 s" "$(ms "$d_stable")" "$(ms "$a_first")" "agent/docker $stable_ratio" "<= 1.0: $stable_v (the same convergence rule for both)"
printf '%-30s %10s %10s %-20s %s\n' "no-op re-apply" "$(ms "$d_noop")" "$(ms "$a_noop")" "docker/agent ${noop_ratio}x" ">= 5x: $noop_v (median of $REPS)"
printf '%-30s %10s %10s %-20s %s\n' "no-op re-apply, --cache-dir" "$(ms "$d_noop")" "$(ms "$a_cached")" "docker/agent ${cached_ratio}x" ">= 5x: $cached_v (median of $REPS)"
printf '%-30s %10s %10s %-20s %s\n' "objects written per no-op" "$d_w" "$a_w" "" "agent 0: $writes_v"
echo "runs (ms): first deploy docker ${docker_first[*]} (tasks up 5 s: ${docker_stable[*]}), agent ${agent_first[*]}; no-op docker ${docker_noop[*]}, agent ${agent_noop[*]}, agent --cache-dir ${agent_cached[*]}"
echo "agent no-op writes per run: Version.Index changes ${agent_writes[*]}; write log lines ${agent_logwrites[*]}"
if [ -n "${BENCH_ROWS:-}" ]; then
  printf 'agent apply no-op, %s services\tdocker stack deploy re-run: %s, %s writes\t%s; --cache-dir %s; %s writes\t>= 5x faster, 0 writes\tcold %s (%sx), --cache-dir %s (%sx), 0 writes %s; load %s\n' \
    "$N" "$(ms "$d_noop")" "$d_w" "$(ms "$a_noop")" "$(ms "$a_cached")" "$a_w" "$noop_v" "$noop_ratio" "$cached_v" "$cached_ratio" "$writes_v" "$LOAD0" >>"$BENCH_ROWS"
  printf 'agent apply first deploy, %s services\tdocker stack deploy: %s\t%s\t<= 1.0x\t%s (%sx; load %s)\n' \
    "$N" "$(ms "$d_first")" "$(ms "$a_first")" "$first_v" "$first_ratio" "$LOAD0" >>"$BENCH_ROWS"
  printf 'agent apply first deploy, %s services, both until every task has run 5 s\tdocker stack deploy until its tasks ran 5 s: %s\t%s\t<= 1.0x\t%s (%sx; load %s)\n' \
    "$N" "$(ms "$d_stable")" "$(ms "$a_first")" "$stable_v" "$stable_ratio" "$LOAD0" >>"$BENCH_ROWS"
fi
