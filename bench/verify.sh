#!/usr/bin/env bash
# Benchmark of issue 4: image signature verification by internal/verify, cold and warm, against a loop of
# the cosign CLI's `cosign verify` over the same 50 signed images in the same run (in-process registry on
# 127.0.0.1, keys generated in the run). Goals: cold >= 20x faster than the CLI loop; warm < 1 ms per image.
# Needs the cosign CLI ($COSIGN, PATH or $(go env GOPATH)/bin):
#   go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3
# BENCH_IMAGES overrides the number of images. Exit 0 when the benchmark ran (goals met or not).
set -euo pipefail
cd "$(dirname "$0")/.."
export SAWMILL_VERIFY_BENCH=1
out=$(go test -count=1 -run '^TestVerifyBenchmark$' -v ./internal/verify/ 2>&1) || { echo "$out"; exit 1; }
echo "$out" | sed -n '/^verify benchmark:/,/warm per image/p'
echo "$out" | grep -q '^verify benchmark:' || { echo "$out"; exit 1; }
