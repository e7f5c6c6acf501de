# shellcheck shell=bash
# Sourced by bench/run.sh and bench/agent-apply.sh. settle waits until the machine is quiet before a
# measurement: at most $BENCH_SETTLE seconds (default 90), until the CPUs were busy less than $BENCH_BUSY per
# cent (default 20) of a 3-second window (/proc/stat). The load average is no guide here: it lags a minute
# behind (a benchmark that just ended leaves it at 3-5 on an idle machine) and on this VM it stays above 1
# while vmstat shows the CPUs 95% idle.

# busy prints the per cent of CPU time not idle (idle and iowait count as idle) over the next 3 seconds.
busy() {
  local a b total idle
  read -r -a a </proc/stat
  sleep 3
  read -r -a b </proc/stat
  total=$(((b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7]) - (a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7])))
  idle=$(((b[4] + b[5]) - (a[4] + a[5])))
  echo $((total > 0 ? 100 * (total - idle) / total : 0))
}

# settle waits for a quiet machine (see above) and prints what it found, for the log.
settle() {
  local until=$(($(date +%s) + ${BENCH_SETTLE:-90})) b
  while b=$(busy) && [ "$b" -ge "${BENCH_BUSY:-20}" ] && [ "$(date +%s)" -lt "$until" ]; do :; done
  echo "CPUs ${b}% busy, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
