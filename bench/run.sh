#!/usr/bin/env bash
# Runs every benchmark bench/*.sh (except this file) one after the other against the test engine
# ($SAWMILL_TEST_DOCKER_HOST, else the private dockerd of hack/dockerd.sh); exits non-zero if any failed.
# `make bench` calls it.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${SAWMILL_TEST_DOCKER_HOST:-}" ]; then
  SAWMILL_TEST_DOCKER_HOST=$(hack/dockerd.sh start) || exit 1
fi
export SAWMILL_TEST_DOCKER_HOST
failed=()
for b in bench/*.sh; do
  [ "$(basename "$b")" = run.sh ] && continue
  echo "=== $b"
  if ! bash "$b"; then
    echo "=== FAILED: $b"
    failed+=("$b")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed benchmarks: ${failed[*]}"
  exit 1
fi
