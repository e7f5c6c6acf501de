# Sawmill delivery. `make demo` runs the local demo; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/.tools/node_modules/.bin:$(HOME)/go/bin:$(PATH)

.PHONY: build test test-go demo demo-clean bench tools
build:
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/...

# The local demo: a private single-node swarm (hack/dockerd.sh), an in-process registry, the agent.
demo: build
	DOCKER_HOST=$$(hack/dockerd.sh start) $(GO) run ./hack/demo -agent bin/agent

demo-clean:
	DOCKER_HOST=$$(hack/dockerd.sh env) $(GO) run ./hack/demo -cleanup

# The test harness: a private swarm-mode dockerd (hack/dockerd.sh) unless SAWMILL_TEST_DOCKER_HOST already
# points at an engine the tests may use.
test:
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} $(MAKE) test-go

test-go:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m ./...

bench:
	SAWMILL_TEST_DOCKER_HOST=$${SAWMILL_TEST_DOCKER_HOST:-$$(hack/dockerd.sh start)} bench/run.sh

# Tools the tests need that are not Go modules of this project.
tools:
	npm install --no-audit --no-fund --prefix .tools gitlab-ci-local@4.62.0
