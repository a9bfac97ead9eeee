# The README's two commands are `make demo` and `make test`; everything else is a step of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STACK_DIR := .stack
MVN := mvn -q -B

.PHONY: install chromium redis-server up down reset-data status demo test check check-fast lint bench loadtest lock schemas snapshot simulate clean

## install: everything the stack and the tests need (idempotent; only what is missing or changed)
install: $(VENV)/.installed $(STACK_DIR)/kafka/.installed $(STACK_DIR)/solr/.installed $(STACK_DIR)/bq-venv/.installed chromium redis-server

# The browser tests drive Debian's chromium (Playwright launches the system binary; it downloads no browser).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" != 0 ]; then echo "The browser tests need Debian's chromium: sudo apt-get install chromium (or set CHROMIUM)" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }

# The Celery broker of STACK_EXECUTOR=celery (and of the Celery tests): Debian's redis-server. The
# stack starts its own on loopback with a password; the package's own service is not used.
redis-server:
	@command -v redis-server >/dev/null || test -x /usr/bin/redis-server || { \
	  if [ "$$(id -u)" != 0 ]; then echo "The Celery executor needs Debian's redis-server: sudo apt-get install redis-server" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }; }

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) pip sync -q --python $(PY) requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

# The state folder holds the stack's generated secrets: readable by its owner only (also when it existed).
$(STACK_DIR)/.private:
	install -d -m 700 $(STACK_DIR)
	chmod 700 $(STACK_DIR)
	touch $@

$(STACK_DIR)/kafka/.installed: stack/kafka/pom.xml | $(STACK_DIR)/.private
	rm -rf $(STACK_DIR)/kafka/lib
	$(MVN) -f stack/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(STACK_DIR)/kafka/lib
	touch $@

$(STACK_DIR)/solr/.installed: stack/solr/pom.xml stack/solr/SolrLauncher.java | $(STACK_DIR)/.private
	rm -rf $(STACK_DIR)/solr/lib $(STACK_DIR)/solr/classes
	$(MVN) -f stack/solr/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(STACK_DIR)/solr/lib
	mkdir -p $(STACK_DIR)/solr/classes
	javac -cp '$(STACK_DIR)/solr/lib/*' -d $(STACK_DIR)/solr/classes stack/solr/SolrLauncher.java
	touch $@

$(STACK_DIR)/bq-venv/.installed: stack/bqemulator-requirements.lock $(VENV)/.installed | $(STACK_DIR)/.private
	test -x $(STACK_DIR)/bq-venv/bin/python || $(PYTHON) -m venv $(STACK_DIR)/bq-venv
	$(UV) pip sync -q --python $(STACK_DIR)/bq-venv/bin/python stack/bqemulator-requirements.lock
	touch $@

## lock: regenerate the exact dependency sets from requirements.txt (run after changing it)
lock: $(VENV)/.installed
	$(UV) pip compile -q --no-header --python-version 3.11 requirements.txt -o requirements.lock
	$(UV) pip compile -q --no-header --python-version 3.11 stack/bqemulator-requirements.txt -o stack/bqemulator-requirements.lock

## lint: ruff (format and lint, line length 100) over the tree, mypy strict on include/ and plugins/,
##   the library's import contracts (import-linter: floors, no Airflow)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

## schemas: regenerate the published JSON Schemas from the contracts (a test fails when they drift)
schemas: $(VENV)/.installed
	$(PY) -m enrollment.contracts.json_schema
	$(PY) -m enrollment.simulator.references

## snapshot: write again what users see (DAGs, configuration, tables, object names, CLIs, page routes) to
##   tests/snapshot/, after a change meant to alter it (a test compares)
snapshot: $(VENV)/.installed
	$(PY) -m tests.snapshot.take

## simulate: the four regions' SAP Commerce systems into the local Kafka (ARGS="--rate 400000/min --duration 5m --faults 2%")
simulate: up
	source $(STACK_DIR)/stack.env && $(PY) -m enrollment.simulator produce $(or $(ARGS),--rate 400000/min --duration 1m --faults 2%)

## up / down / status: the local stack (every service on 127.0.0.1; state and generated secrets under .stack/, mode 0700)
##   STACK_EXECUTOR=celery make up: Airflow on the CeleryExecutor (Redis broker, the configured workers); kept until STACK_EXECUTOR=local
up: install
	$(PY) -m stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m stack down; fi

## reset-data: stop the stack and remove the data it keeps (Kafka, Solr, GCS, BigQuery): benchmarks start from a known state
reset-data: $(VENV)/.installed
	$(PY) -m stack reset-data

status:
	$(PY) -m stack status

## demo: the main job on the local stack, then where to look
demo: up
	$(PY) -m stack.demo

## test: the whole suite; the session starts what the tests need and stops what it started
test: install
	$(PY) -m pytest

## check: while working — lint (with mypy) and the tiers that start nothing (unit, DAG validation)
check: lint
	$(PY) -m pytest -q tests/unit tests/dag_validation

## check-fast: after every edit — ruff, the import contracts and the unit tier but its slow property
##   tests (no mypy, no DagBag; make check runs them all)
check-fast: $(VENV)/.installed
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m "not slow" tests/unit

## bench: every benchmark; bench-NAME runs bench/NAME.py (results in bench/results/)
bench: bench-stack bench-validation bench-simulator bench-ingest bench-freshness bench-sinks bench-backlog bench-tls bench-reconciliation

## loadtest: the gridlock test on the running stack and Airflow, with faults; a report with plots
##   ARGS="--rate 400000/min --duration 10m --fault solr-down@3m:2m" (python -m bench.loadtest --help)
loadtest: up
	$(PY) -m bench.loadtest $(ARGS)

bench-%: install
	$(PY) -m bench.$*

clean: down
	rm -rf $(STACK_DIR) $(VENV)
