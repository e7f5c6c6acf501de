# Sawmill delivery. `make demo` runs the local demo; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/.tools/node_modules/.bin:$(HOME)/go/bin:$(PATH)

.PHONY: build dist test test-go test-py demo demo-clean bench tools check-digests
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
# SAWMILL_TEST_PG_DSN names one.
test: tools
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} \
	SAWMILL_TEST_PG_DSN=$${SAWMILL_TEST_PG_DSN:-$$(hack/postgres.sh start)} $(MAKE) test-go test-py

test-go:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m ./...

# live_py's and batch_etl's tests run with Debian's Python (python3-psycopg2); PyPI is not needed.
test-py:
	images/live_py/test.sh
	images/batch_etl/test.sh

bench:
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} bench/run.sh

# The digest-pinned third-party images (compose files under stacks/, Dockerfiles under images/) against their
# registries: does each digest exist, where does its tag point now. Needs the registries (hack/digests).
check-digests:
	$(GO) run ./hack/digests

# Tools the tests run as independent peers: gitlab-ci-local (GitLab CI interpreter), conftest (the same
# policies through another engine), the cosign CLI (signature interop; a cold build takes minutes).
CONFTEST_VERSION ?= v0.71.1
COSIGN_VERSION ?= v3.1.3
tools:
	[ -x .tools/node_modules/.bin/gitlab-ci-local ] || npm install --no-audit --no-fund --prefix .tools gitlab-ci-local@4.62.0
	command -v conftest >/dev/null || $(GO) install github.com/open-policy-agent/conftest@$(CONFTEST_VERSION)
	command -v cosign >/dev/null || $(GO) install github.com/sigstore/cosign/v3/cmd/cosign@$(COSIGN_VERSION)
