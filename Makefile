# Every target creates the virtual environment it needs (.venv) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo serve test test-server soak lint bench docs clean

$(VENV)/.venv-created:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	touch $@

# one stamp per extra set, remade when pyproject.toml changes
$(VENV)/.installed-cli: pyproject.toml $(VENV)/.venv-created
	$(BIN)/pip install -q -e '.[cli]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.venv-created
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-cli

# the dashboard's browser tests drive Debian's chromium headless (Playwright's own browser
# download is not used); installed here where it is missing (as root, or through sudo)
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get install -y chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.venv-created
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed-cli

demo: $(VENV)/.installed-cli
	$(BIN)/agentcomm demo

# the HTTP server over the store at $(URL) (default as connect()); docs/server.md
URL ?=
serve: $(VENV)/.installed-test
	$(BIN)/agentcomm serve $(URL)

test: $(VENV)/.installed-test $(CHROMIUM)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

# the crash-and-fault campaign of the suite run long: SOAK_SECONDS of faults in each of its six
# scenarios (kill -9 of SQLite producers, consumers, send_many commits; of redis-server; dropped
# Redis connections, with and without idempotency keys); -s prints each scenario's figures
SOAK_SECONDS ?= 120
soak: $(VENV)/.installed-test
	AGENTCOMM_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q -s -m faults tests/test_faults_sqlite.py tests/test_faults_redis.py

# every conformance test over a live server (make test runs only tests/conftest.py HTTP_FILES
# over it); about 5 minutes on 2 cores; docs/server.md "Conformance over the server"
test-server: $(VENV)/.installed-test
	AGENTCOMM_TEST_HTTP=1 $(BIN)/pytest -q -k http tests/

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# the docs site (mkdocs.yml): built into site/, warnings are errors
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
