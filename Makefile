# Arbiter's entry points. `make run` and `make test` are the two set-up commands;
# both create the virtualenv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SAMPLE ?= samples/local/canary-good.yaml

.PHONY: install os-deps node-deps test pytest pytest-parallel faults e2e lint fmt typecheck run bench coldstart clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,bench,test,lint]'
	touch $(STAMP)

# OS packages the real-server tests need (see README). Installed only where we can
# (root with apt); elsewhere the README says what to install.
os-deps:
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo 'os-deps: installing prometheus (Debian package, without recommends)'; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else \
		echo 'os-deps: prometheus/promtool missing; the real-Prometheus tests will fail until you run:' >&2; \
		echo '  sudo apt-get install --no-install-recommends prometheus' >&2; \
	fi
	@# The headless browser the report test renders `arbiter report`'s page in.
	@if command -v chromium >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo 'os-deps: installing chromium (Debian package, without recommends)'; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
		echo 'os-deps: chromium missing; the report browser test will fail until you run:' >&2; \
		echo '  sudo apt-get install --no-install-recommends chromium' >&2; \
	fi

# The schema validator for Knative, Gateway API and Istio objects (tools/knative-validate),
# pinned by its package-lock: the manifest tests and the local API server use it.
KNATIVE_VALIDATE := tools/knative-validate
NODE_STAMP := $(KNATIVE_VALIDATE)/node_modules/.package-lock.json

node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(KNATIVE_VALIDATE)/package.json $(KNATIVE_VALIDATE)/package-lock.json
	npm ci --prefix $(KNATIVE_VALIDATE) --no-audit --no-fund

# The suite in two parts. Everything that does not need the machine to itself (pure
# logic, in-process fakes, simulations, the real-server integration tests: about 4.5 min
# on one core) runs in two processes (pytest-xdist, a module per process), with lint
# beside it; then the `exclusive` tests (the local runs and the real model servers, whose
# latencies must not be starved; they run two local runs at a time themselves) alone.
test: install os-deps node-deps
	$(MAKE) --no-print-directory -j2 lint pytest-parallel
	$(PY) -m pytest -q -m exclusive

pytest-parallel: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not exclusive"

pytest: install
	$(PY) -m pytest -q

# The whole fault matrix (in parallel shards, ending with its table), then the load runs:
# 200 experiments in one process, several experiments per run, scale-to-zero.
faults: install os-deps
	$(PY) tests/faults/run.py
	$(PY) -m pytest -q -p no:cacheprovider -m faults tests/integration/test_local_load.py

# Opt-in, for a real cluster (docs/cluster.md#end-to-end-check-on-your-cluster): installs
# Arbiter where KUBECONFIG points and runs a promotion and a rollback on real
# InferenceServices. Not part of `make test`: no cluster here.
e2e: install
	@test -n "$$KUBECONFIG" || { echo 'make e2e: set KUBECONFIG to a cluster with Knative Serving and Eventing, KServe and Prometheus (docs/cluster.md#end-to-end-check-on-your-cluster)' >&2; exit 2; }
	@command -v kubectl >/dev/null || { echo 'make e2e: kubectl is not on PATH' >&2; exit 2; }
	$(PY) -m pytest -q -p no:cacheprovider -m e2e tests/e2e

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy

run: install os-deps
	$(VENV)/bin/arbiter run $(SAMPLE) --speed 5

bench: install
	$(VENV)/bin/arbiter bench --quick

# Each function's time from process start to its first answered event, beside a bare
# functions-framework function, and the installed size of the runtime (README "Cold start").
coldstart: install
	$(PY) -m local.coldstart --size

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
