# guardstream developer and CI entry points. Works on a fresh Debian machine as root (or with sudo).
#   make setup   system packages (incl. Debian's chromium for the dashboard's browser test), virtualenv,
#                Python deps, Kafka jars
#   make test    setup, kustomize if it can be had, start the local stack, create topics, run pytest,
#                stop the stack
#   make demo    setup, then `guardstream demo` (needs no Go and no kustomize)
#   make lint    ruff + mypy
#   make tools   kustomize for the manifest-rendering tests (deploy/tools/install-kustomize.sh)
#   make images  build the worker images; make push  push them (IMAGE_REGISTRY, IMAGE_TAG)
# PYTEST_ARGS="tests/input -x" narrows the test run; ALLOW_NO_TESTS=1 turns pytest's
# "no tests collected" (exit 5) into success.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.guardstream-installed
PYTEST_ARGS ?=
# Images: the names and tag the Kubernetes overlays use (deploy/k8s/overlays/*/kustomization.yaml
# `images:`); change IMAGE_REGISTRY and IMAGE_TAG here and there together.
IMAGE_REGISTRY ?= ghcr.io/example
IMAGE_TAG ?= 0.1.0
IMAGES := stream-cpu stream-cuda generative
DOCKER ?= docker
ALLOW_NO_TESTS ?= 0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages python-deps kafka-jars tools test demo lint up down images push

setup: system-packages python-deps kafka-jars

# Install only what is missing; apt-get update runs only when something must be installed.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v chromium >/dev/null || missing="$$missing chromium fonts-dejavu-core"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

python-deps: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[torch,bench,gateway,demo,dev]"
	touch $(STAMP)

kafka-jars: python-deps
	$(BIN)/guardstream up --jars-only

# kustomize is built with Go (deploy/tools/install-kustomize.sh). Without Go, `make test` skips the
# manifest-rendering tests with a notice; GUARD_REQUIRE_KUSTOMIZE=1 (set by .ci/run) makes the
# installer fetch the Go toolchain itself and a failure to install it fatal.
tools:
	@if [ "$${GUARD_REQUIRE_KUSTOMIZE:-0}" = 1 ]; then \
	  bash deploy/tools/install-kustomize.sh >/dev/null; \
	elif command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || [ -x .guardstream/bin/kustomize ]; then \
	  bash deploy/tools/install-kustomize.sh >/dev/null || \
	    echo "NOTICE: kustomize could not be installed; the manifest-rendering tests will be skipped"; \
	else \
	  echo "NOTICE: no Go on this machine, so no kustomize: the manifest-rendering tests (tests/deploy) will be"; \
	  echo "        skipped. Install Go >= 1.21 or run deploy/tools/install-kustomize.sh to run them."; \
	fi

# Stops the stack afterwards only if this run started it (a developer's running stack is left alone).
test: setup tools
	@started=0; \
	out=$$($(BIN)/guardstream up) ; up_status=$$?; echo "$$out"; \
	if grep -q " started " <<<"$$out"; then started=1; fi; \
	if [ $$up_status -ne 0 ]; then $(BIN)/guardstream down; exit $$up_status; fi; \
	$(BIN)/guardstream topics && $(BIN)/pytest -q $(PYTEST_ARGS); status=$$?; \
	if [ $$started -eq 1 ]; then $(BIN)/guardstream down; fi; \
	if [ $$status -eq 5 ] && [ "$(ALLOW_NO_TESTS)" = 1 ]; then echo "pytest collected no tests"; status=0; fi; \
	exit $$status

demo: setup
	$(BIN)/guardstream demo

lint: python-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

up: kafka-jars
	$(BIN)/guardstream up

down:
	$(BIN)/guardstream down

# One image per deploy/docker/<name>.Dockerfile, built from the repository root.
images:
	@for name in $(IMAGES); do \
	  echo "building $(IMAGE_REGISTRY)/guardstream-$$name:$(IMAGE_TAG)"; \
	  $(DOCKER) build -f deploy/docker/$$name.Dockerfile -t $(IMAGE_REGISTRY)/guardstream-$$name:$(IMAGE_TAG) . || exit 1; \
	done

push: images
	@for name in $(IMAGES); do \
	  $(DOCKER) push $(IMAGE_REGISTRY)/guardstream-$$name:$(IMAGE_TAG) || exit 1; \
	done
