# Parley developer entry points. `make` alone lists the targets.
# Postgres/Redis/S3: scripts/deps.sh (PARLEY_PG_URL / PARLEY_REDIS_URL / PARLEY_S3_ENDPOINT,
# or private instances under .local/ on 127.0.0.1:55432, :56379 and :59000 (S3: moto_server
# from a cached Python venv); see the script's header).

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
CARGO_TARGET_DIR ?= $(HOME)/.cache/parley/target
export CARGO_TARGET_DIR
# nextest profile: `ci` when CI is set (see .config/nextest.toml)
NEXTEST_PROFILE ?= $(if $(filter true 1 yes,$(CI)),ci,default)
# extra arguments for the test runner, e.g. make test TEST_ARGS='-E test(foo)'
TEST_ARGS ?=
# UNSAFE, tests only: each test database commits without waiting for the WAL flush
# (synchronous_commit = off on that database; the cluster keeps fsync on). 0 runs the
# suite fully durable, as `make up` and `make bench` always run.
PARLEY_TEST_UNSAFE_ASYNC_COMMIT ?= 1
export PARLEY_TEST_UNSAFE_ASYNC_COMMIT

.PHONY: help deps build up up-detached down test lint fmt clean-local compose-check bench k8s-check

help: ## List the targets
	@echo "Parley make targets (CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)):"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		awk -F':.*## ' '{ printf "  %-14s %s\n", $$1, $$2 }'

deps: ## Ensure Postgres + Redis + S3 (private instances under .local/ unless configured)
	scripts/deps.sh

build: ## Build all service binaries (debug)
	$(CARGO) build --workspace --bins

up: deps build ## Build, then run all services in the foreground (Ctrl-C stops them)
	scripts/up.sh

up-detached: deps build ## Build, then start all services in the background
	scripts/up.sh --detach

down: ## Stop the services started by make up / up-detached
	scripts/down.sh

test: deps ## Run the workspace tests against deps (nextest, else cargo test)
	@. .local/deps.env && \
	export PARLEY_TEST_PG_URL="$$PARLEY_PG_URL" PARLEY_TEST_REDIS_URL="$$PARLEY_REDIS_URL" \
		PARLEY_TEST_S3_ENDPOINT="$$PARLEY_S3_ENDPOINT" PARLEY_TEST_S3_REGION="$$PARLEY_S3_REGION" \
		PARLEY_TEST_S3_BUCKET="$$PARLEY_S3_BUCKET" PARLEY_TEST_S3_ACCESS_KEY_ID="$$PARLEY_S3_ACCESS_KEY_ID" \
		PARLEY_TEST_S3_SECRET_ACCESS_KEY="$$PARLEY_S3_SECRET_ACCESS_KEY" && \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "+ cargo nextest run --workspace --no-fail-fast --profile $(NEXTEST_PROFILE) $(TEST_ARGS)"; \
		$(CARGO) nextest run --workspace --no-fail-fast --profile $(NEXTEST_PROFILE) $(TEST_ARGS); \
	else \
		echo "cargo-nextest not found: falling back to cargo test, one test at a time (some tests read process-wide metrics)" >&2; \
		echo "+ cargo test --workspace --no-fail-fast $(TEST_ARGS) -- --test-threads=1"; \
		$(CARGO) test --workspace --no-fail-fast $(TEST_ARGS) -- --test-threads=1; \
	fi

lint: ## rustfmt check, clippy (-D warnings), buf lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash scripts/buf.sh lint

bench: deps ## Benchmarks on release builds (~10 min; sizes: BENCH_* in scripts/bench.sh) -> bench/RESULTS.md
	scripts/bench.sh

compose-check: ## Validate docker-compose.yml, Prometheus config/rules (+ rule tests), Grafana dashboard (installs docker-compose, promtool if missing; no engine needed)
	@command -v docker-compose >/dev/null 2>&1 || apt-get install -y docker-compose >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y docker-compose >/dev/null; }
	docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml is valid"
	bash deploy/check.sh

k8s-check: ## Render k8s/overlays/* without kubectl into .local/k8s/ and validate (rules + kubernetes-validate --strict)
	bash scripts/k8s-check.sh

fmt: ## Format the Rust code
	$(CARGO) fmt --all

clean-local: ## Stop everything and delete .local (private databases, logs, pids)
	scripts/down.sh --all
	scripts/deps.sh clean
	rm -rf .local
