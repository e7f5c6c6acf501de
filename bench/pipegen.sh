#!/usr/bin/env bash
# Benchmark of pipegen (issue 3): a synthetic monorepo of 1,000 images (every tenth a base the
# next nine build on) and 50,000 files committed in git; `pipegen generate` wall time as a ratio
# to `git ls-files` on the same repository in the same run (goal <= 3x), and pipegen's peak
# memory (goal < 100 MB). Needs go, git and GNU time (/usr/bin/time; apt-get install -y time).
# Usage: bench/pipegen.sh [images] [files]   (defaults 1000 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-1000}
FILES=${2:-50000}
RUNS=${RUNS:-7}
[ -x /usr/bin/time ] || { echo "bench/pipegen.sh: /usr/bin/time (GNU time) is missing: apt-get install -y time" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/pipegen" ./cmd/pipegen
repo=$work/repo
t0=$(date +%s%N)
n=$(go run ./bench/pipegen-synth -dir "$repo" -images "$IMAGES" -files "$FILES")
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=bench -c user.email=bench@example.com commit -q -m synthetic
base=$(git -C "$repo" rev-parse HEAD)
# A second commit touching three base images, a watched library and some docs.
for f in images/img0000/src/new.go images/img0500/Dockerfile images/img0990/src/x.go libs/lib7/new.go docs/new.md; do
  mkdir -p "$(dirname "$repo/$f")"
  echo "// change" >> "$repo/$f"
done
git -C "$repo" add -A
git -C "$repo" -c user.name=bench -c user.email=bench@example.com commit -q -m change
t1=$(date +%s%N)
echo "synthetic repository: $IMAGES images, $n files, committed in $(( (t1 - t0) / 1000000 )) ms"

# Wall time in ms of one run of a command.
wall_ms() {
  local s e
  s=${EPOCHREALTIME/./}; "$@" > /dev/null 2>&1; e=${EPOCHREALTIME/./} # bash 5: no fork on either side
  echo $((e - s))
}
median() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'; }
# CPU time (user + system, children included) in us of one run, from GNU time (10 ms resolution)
cpu_us() {
  /usr/bin/time -f "%U %S" "$@" 2>&1 >/dev/null | tail -1 | awk '{printf "%d", ($1 + $2) * 1000000}'
}
# peak resident memory in MB of one run
peak_mb() {
  /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {printf "%.1f", $2/1024}'
}

zero=0000000000000000000000000000000000000000
git -C "$repo" ls-files > /dev/null # warm the page cache
"$work/pipegen" generate --repo "$repo" --base "$zero" -o "$work/full.yml" 2>/dev/null
# Interleaved runs, so that every command sees the same machine load.
ls_t=() full_t=() incr_t=() plan_t=() ls_c=() full_c=() incr_c=()
for ((i = 0; i < RUNS; i++)); do
  ls_c+=("$(cpu_us git -C "$repo" ls-files)")
  full_c+=("$(cpu_us "$work/pipegen" generate --repo "$repo" --base "$zero" -o "$work/full.yml")")
  incr_c+=("$(cpu_us "$work/pipegen" generate --repo "$repo" --base "$base" -o "$work/incr.yml")")
  ls_t+=("$(wall_ms git -C "$repo" ls-files)")
  full_t+=("$(wall_ms "$work/pipegen" generate --repo "$repo" --base "$zero" -o "$work/full.yml")")
  incr_t+=("$(wall_ms "$work/pipegen" generate --repo "$repo" --base "$base" -o "$work/incr.yml")")
  plan_t+=("$(wall_ms "$work/pipegen" plan --repo "$repo" --base "$base")")
done
ls_ms=$(printf '%s\n' "${ls_t[@]}" | median)
full_ms=$(printf '%s\n' "${full_t[@]}" | median)
incr_ms=$(printf '%s\n' "${incr_t[@]}" | median)
plan_ms=$(printf '%s\n' "${plan_t[@]}" | median)
ls_cpu=$(printf '%s\n' "${ls_c[@]}" | median)
full_cpu=$(printf '%s\n' "${full_c[@]}" | median)
incr_cpu=$(printf '%s\n' "${incr_c[@]}" | median)
full_mb=$(peak_mb "$work/pipegen" generate --repo "$repo" --base "$zero" -o "$work/full.yml")
incr_mb=$(peak_mb "$work/pipegen" generate --repo "$repo" --base "$base" -o "$work/incr.yml")
"$work/pipegen" lint "$work/full.yml" > /dev/null

jobs_full=$(grep -c '^"\?[a-z]*:\?[a-z0-9_-]*"\?:$' "$work/full.yml" || true)
jobs_incr=$(grep -c '^"\?[a-z]*:\?[a-z0-9_-]*"\?:$' "$work/incr.yml" || true)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "median of $RUNS interleaved runs (wall time; load average $(cut -d" " -f1 /proc/loadavg) on $(nproc) CPUs):"
printf '  %-44s %8s ms\n' "git ls-files" "$ls_ms"
printf '  %-44s %8s ms  ratio %sx (goal <= 3x)  peak %s MB (goal < 100 MB)  %s top-level keys, %s bytes\n' \
  "pipegen generate (everything rebuilt)" "$full_ms" "$(ratio "$full_ms" "$ls_ms")" "$full_mb" "$jobs_full" "$(wc -c < "$work/full.yml")"
printf '  %-44s %8s ms  ratio %sx (goal <= 3x)  peak %s MB (goal < 100 MB)  %s top-level keys\n' \
  "pipegen generate (5 paths changed)" "$incr_ms" "$(ratio "$incr_ms" "$ls_ms")" "$incr_mb" "$jobs_incr"
printf '  %-44s %8s ms  ratio %sx\n' "pipegen plan (5 paths changed)" "$plan_ms" "$(ratio "$plan_ms" "$ls_ms")"
echo "median CPU time (user + system; less sensitive to machine load, 10 ms resolution):"
printf '  %-44s %8s ms\n' "git ls-files" "$ls_cpu"
printf '  %-44s %8s ms  ratio %sx\n' "pipegen generate (everything rebuilt)" "$full_cpu" "$(ratio "$full_cpu" "$ls_cpu")"
printf '  %-44s %8s ms  ratio %sx\n' "pipegen generate (5 paths changed)" "$incr_cpu" "$(ratio "$incr_cpu" "$ls_cpu")"
if [ -n "${BENCH_ROWS:-}" ]; then
  r=$(ratio "$full_ms" "$ls_ms")
  v=$(awk -v r="$r" 'BEGIN { if (r <= 3) print "met"; else print "not met" }')
  printf 'pipegen generate, %s images / %s files, all rebuilt\tgit ls-files: %s ms\t%s ms (5 changed: %s ms; peak %s MB)\t<= 3x\t%s (%sx; load %s)\n' \
    "$IMAGES" "$FILES" "$ls_ms" "$full_ms" "$incr_ms" "$full_mb" "$v" "$r" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$BENCH_ROWS"
fi
