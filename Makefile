# Sawmill delivery. `make demo` runs the local demo; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/.tools/node_modules/.bin:$(HOME)/go/bin:$(PATH)

.PHONY: build dist test test-go test-py fuzz faults demo demo-clean bench tools check-digests e2e
build:
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/...

# Release assets (hack/dist.sh, run by pipelines/assets.yml on a tag): binaries, SBOMs, SHA256SUMS in dist/out/.
dist:
	hack/dist.sh

# The local demo (hack/demo): a private single-node swarm (hack/dockerd.sh), an in-process registry, pipegen
# and the agent. DEMO_FLAGS: e.g. -images local (assemble PostgreSQL from Debian's packages) or -port 18081.
demo: build
	DOCKER_HOST=$$(hack/dockerd.sh start) $(GO) run ./hack/demo -agent bin/agent -pipegen bin/pipegen $(DEMO_FLAGS)

# Removes the demo stack and its images, then stops the private engine (its data root stays for the next start).
demo-clean:
	DOCKER_HOST=$$(hack/dockerd.sh env) $(GO) run ./hack/demo -cleanup
	hack/dockerd.sh stop

# The test harness: a private swarm-mode dockerd (hack/dockerd.sh) unless SAWMILL_TEST_DOCKER_HOST already
# points at an engine the tests may use, and a private PostgreSQL (hack/postgres.sh) unless
# SAWMILL_TEST_PG_DSN names one. It runs every fault case once (docs/reliability.md); FAULT_MULTINODE_CASES
# picks 3-manager cases (empty: all), `make faults` repeats them all.
test: tools
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} \
	SAWMILL_TEST_PG_DSN=$${SAWMILL_TEST_PG_DSN:-$$(hack/postgres.sh start)} \
	SAWMILL_TEST_MULTINODE=$${SAWMILL_TEST_MULTINODE:-$(CURDIR)/hack/multinode.sh} \
	$(MAKE) test-go fuzz test-py

test-go:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m ./...

# Every fuzz target (go test -fuzz) of the parsers of outside input, one after the other, each for FUZZTIME.
# `go test ./...` already runs their seed corpora (testdata/fuzz/<target>/) as regression tests; this looks for
# new crashes. A failing input is written to the package's testdata/fuzz/<target>/: fix the code, keep the file.
# -fuzzminimizetime keeps a short run fuzzing instead of shrinking each new interesting input.
FUZZTIME ?= 10s
FUZZ_TARGETS := FuzzParse:./internal/manifest FuzzLoad:./internal/compose FuzzTrustPolicy:./internal/verify \
	FuzzConfig:./cmd/pipegen FuzzImageSpec:./internal/discover FuzzWebhook:./internal/status \
	FuzzValue:./internal/sopsfile FuzzDecodePin:./internal/reconcile FuzzParseRecord:./internal/release \
	FuzzDecodeRequest:./internal/reconcile FuzzEachWord:./internal/compose
# Go's fuzzer can end a run with "context deadline exceeded" when -fuzztime runs out while it minimizes a new
# interesting input; that is not a finding (no failing input is written) and does not fail the target.
fuzz:
	set -e; out=$$(mktemp); for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $${t%%:*} ($${t#*:}, $(FUZZTIME))"; \
		if ! $(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s "$${t#*:}" >$$out 2>&1; then \
			cat $$out; \
			if grep -q "context deadline exceeded" $$out && ! grep -q "Failing input written" $$out; then \
				echo "fuzz: $${t%%:*}: the fuzzer's own deadline while minimizing, no failing input: not a finding"; \
			else rm -f $$out; exit 1; fi; \
		else tail -n 3 $$out; fi; \
	done; rm -f $$out

# live_py's and batch_etl's tests run with Debian's Python (python3-psycopg2); PyPI is not needed.
test-py:
	images/live_py/test.sh
	images/batch_etl/test.sh

# The whole delivery loop on one machine (cmd/agent/loop_e2e_test.go, TestWholeLoop; `make test` runs it
# too): gitlab-ci-local runs a monorepo's parent and child pipelines with pipelines/ and real buildah, cosign
# and pipegen against a local registry (scanners stood in), then `agent install` puts the agent the pipeline
# built on the private swarm and it deploys the release. Needs root (buildah, storage driver vfs).
e2e: tools
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} \
	$(GO) test -count=1 -timeout 20m -run '^TestWholeLoop$$' -v ./cmd/agent/

# The fault suite (cmd/agent/faults_test.go, faults_multinode_test.go): each fault FAULT_REPEAT times against the
# private swarm, a 3-manager swarm in network namespaces (hack/multinode.sh), the
# GitLab API stand-in and a stalling registry; the table goes to docs/reliability.md's format on stdout.
FAULT_REPEAT ?= 5
faults:
	rm -f /tmp/sawmill-faults.md
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} FAULT_REPEAT=$(FAULT_REPEAT) \
	SAWMILL_TEST_MULTINODE=$${SAWMILL_TEST_MULTINODE:-$(CURDIR)/hack/multinode.sh} \
	FAULT_TABLE=/tmp/sawmill-faults.md $(GO) test -count=1 -timeout 60m -run '^TestFault' ./cmd/agent/
	@echo "| fault | repetitions | outcome | recovery |"; echo "|---|---|---|---|"; cat /tmp/sawmill-faults.md

bench:
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} bench/run.sh

# The digest-pinned third-party images (compose files under stacks/, Dockerfiles under images/) against their
# registries: does each digest exist, where does its tag point now. Needs the registries (hack/digests).
check-digests:
	$(GO) run ./hack/digests

# Tools the tests run as independent peers: gitlab-ci-local (GitLab CI interpreter), conftest (the same
# policies through another engine), the cosign CLI (signature interop; a cold build takes minutes), the
# ORAS CLI (signing.pipeline parent's resolve and sbom jobs, in the pipegen end-to-end tests).
CONFTEST_VERSION ?= v0.71.1
COSIGN_VERSION ?= v3.1.3
ORAS_VERSION ?= v1.3.0
tools:
	[ -x .tools/node_modules/.bin/gitlab-ci-local ] || npm install --no-audit --no-fund --prefix .tools gitlab-ci-local@4.62.0
	command -v conftest >/dev/null || $(GO) install github.com/open-policy-agent/conftest@$(CONFTEST_VERSION)
	command -v cosign >/dev/null || $(GO) install github.com/sigstore/cosign/v3/cmd/cosign@$(COSIGN_VERSION)
	command -v oras >/dev/null || $(GO) install oras.land/oras/cmd/oras@$(ORAS_VERSION)
