# Set-up and everyday commands. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MUTATE_STAMP := $(VENV)/.installed-mutate
#: Mutant names or globs for `make mutate` (e.g. MUTANTS='broker.store.*'); empty: all of them.
MUTANTS ?=

CHROMEDRIVER := /usr/bin/chromedriver

.PHONY: install browser run test test-fast lint format fuzz-core fuzz-frames fuzz fuzz-api chaos attack attack-http bench bench-peers mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(MUTATE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,mutate]'
	touch $(MUTATE_STAMP)

# Debian's chromium and its driver, for the dashboard's browser test; installed when missing.
browser: $(CHROMEDRIVER)

$(CHROMEDRIVER):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

run: $(STAMP)
	$(BIN)/zmq-scheduler up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two processes for most of the suite; then, alone, the tests that time how others are
# served during an attack, which a second test beside them would skew.
test: lint browser
	$(BIN)/pytest -n 2 -m "not serial"
	$(BIN)/pytest -m serial

test-fast: $(STAMP)
	$(BIN)/pytest -x -q tests/unit

# The core's state machine test with many more random sequences than make test runs.
fuzz-core: $(STAMP)
	ZMQS_FUZZ_EXAMPLES=$${ZMQS_FUZZ_EXAMPLES:-3000} $(BIN)/pytest -q -s -p no:logging --timeout=0 \
		tests/unit/test_core_machine.py

# Generated frames from 8 peers at once against a real broker and worker, in many more
# batches than make test sends, drawn afresh each time (ZMQS_FUZZ_FRAMES batches).
fuzz-frames: $(STAMP)
	ZMQS_FUZZ_FRAMES=$${ZMQS_FUZZ_FRAMES:-2000} $(BIN)/pytest -q -s -p no:cacheprovider \
		--timeout=0 tests/integration/test_frame_fuzz.py

# schemathesis against a local stack, from the API's OpenAPI document, with many more
# requests an operation than make test sends (ZMQS_SCHEMATHESIS_EXAMPLES), new each run.
fuzz-api: $(STAMP)
	ZMQS_SCHEMATHESIS_EXAMPLES=$${ZMQS_SCHEMATHESIS_EXAMPLES:-1000} $(BIN)/pytest -q -p no:logging --timeout=3600 \
		tests/integration/test_api_fuzz.py

# Every fuzzer at its large size.
fuzz: fuzz-core fuzz-frames fuzz-api

chaos: $(STAMP)
	ZMQS_CHAOS_TASKS=5000 $(BIN)/pytest -m chaos tests/chaos -s

# The attacks of tests/integration/test_attacks.py at the sizes they were first measured at.
attack: $(STAMP)
	ZMQS_ATTACK_SCALE=full $(BIN)/pytest -q -s tests/integration/test_attacks.py

bench: $(STAMP)
	$(BIN)/python -m bench

# Slow headers, slow bodies, idle connections and long waits against the API at full size
# (tests/integration/test_http_attacks.py runs them scaled down): about 5 minutes.
# Side by side with the peers on Redis (bench/peers/README.md): about 15 minutes for all;
# `make bench-peers PEERS="zmqs huey"` for some. The peers get a virtual environment of their
# own, with this checkout installed in it; results in bench/peers/results.md.
PEERS_VENV ?= $(CURDIR)/.venv-peers
PEERS ?= zmqs zmqs-sync huey dramatiq celery
bench-peers:
	PEERS_VENV=$(PEERS_VENV) bash bench/peers/setup.sh
	for system in $(PEERS); do PEERS_VENV=$(PEERS_VENV) bash bench/peers/run.sh $$system || exit 1; done

attack-http: $(STAMP)
	$(BIN)/python -m bench.attack_http

# Mutation testing of the broker modules that [tool.mutmut] in pyproject.toml names (all of
# broker/ but its socket loop and command line) against tests/unit: about 17 minutes on 2 cores.
# Starts afresh every time: mutmut keeps earlier verdicts for unchanged code even when the
# tests changed. Survivors and their diffs go to var/mutation-report.txt.
mutate: $(MUTATE_STAMP)
	rm -rf mutants
	$(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python tests/mutation_report.py var/mutation-report.txt

clean:
	rm -rf $(VENV) var mutants .pytest_cache .mypy_cache .ruff_cache
