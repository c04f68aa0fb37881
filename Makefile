# ucim developer commands. `make help` lists them.
SHELL := bash
.DEFAULT_GOAL := help
PYTHON ?= python3
PLATFORM := $(PYTHON) hack/local_platform.py
PYTEST := $(PYTHON) -m pytest

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: ## Install ucim and its development tools (editable)
	$(PYTHON) -m pip install -q -e '.[dev]'

.PHONY: deps
deps: ## Install the system packages the local platform needs (Debian, root)
	bash hack/install-deps.sh

.PHONY: platform-up
platform-up: deps ## Start the local platform: etcd, kube-apiserver, controller-manager, Slurm, users
	$(PLATFORM) up

.PHONY: platform-down
platform-down: ## Stop every process the local platform started
	$(PLATFORM) down

.PHONY: platform-status
platform-status: ## Show what the local platform runs
	$(PLATFORM) status

.PHONY: demo
demo: install platform-up ## Bring up the platform and run a demo job end to end
	$(PYTHON) hack/demo.py

.PHONY: lint
lint: ## ruff and mypy (the layering contract is a unit test)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy -p ucim
	$(PYTHON) -m mypy hack/local_platform.py hack/demo.py tests e2e bench conftest.py

.PHONY: test-unit
test-unit: ## Unit tests: no processes, fast
	$(PYTEST) tests/unit

.PHONY: test-integration
test-integration: deps ## Integration tests against the real local platform (started if needed)
	$(PYTEST) tests/integration

.PHONY: e2e
e2e: deps ## End-to-end tests on the local platform
	$(PYTEST) e2e --platform=local

.PHONY: helm
helm: ## Build (or reuse) the pinned helm v3 in the ucim cache (~/.cache/ucim/bin)
	bash hack/build-helm.sh

.PHONY: chart-test
chart-test: deps helm ## Chart, alert and dashboard checks (helm lint/template/install on the local platform, promtool)
	$(PYTEST) tests/chart

.PHONY: kind-up
kind-up: ## kind cluster + chart + a Slurm frontend container with the bridge (skips without Docker/kind)
	bash hack/kind/up.sh

.PHONY: kind-down
kind-down: ## Remove the kind cluster and its containers
	bash hack/kind/down.sh

.PHONY: e2e-kind
e2e-kind: ## End-to-end tests on a kind cluster (needs Docker and kind; skips cleanly without them)
	bash hack/kind/e2e.sh

.PHONY: test
test: install lint deps helm ## Everything CI runs: lint, unit, integration, chart and e2e tests
	$(PYTEST) tests e2e --platform=local

.PHONY: bench
bench: platform-up ## Benchmarks (JSON and a table)
	$(PYTHON) -m bench

.PHONY: drills
drills: deps ## Only the fault drills (part of make test and make e2e), with their reports (~6 min)
	$(PYTEST) e2e/test_drills.py --platform=local -s

.PHONY: soak
soak: platform-up ## Seeded chaos soak, not in CI: 500 jobs of 20 users while components crash (SEED=1, up to 20 min)
	$(PYTHON) -m bench soak --seed $(or $(SEED),1) $(SOAK_ARGS)

.PHONY: clean
clean: ## Remove caches of the Python tools (not the platform's binaries)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
