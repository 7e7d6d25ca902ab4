# Two commands: `make run` (the service) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-rq2 lint typecheck format install clean bench

$(BIN)/.installed: requirements.txt requirements-dev.txt setup.cfg
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python scripts/dev.py

# Starts Redis (and PostgreSQL for TEST_DATABASE_URL) when installed but not running, installs
# Debian's chromium for the browser test when root, else says what to run (scripts/testenv.py).
test: install
	$(BIN)/python scripts/testenv.py
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that touch RQ (marked `rq`) with the newest RQ 2.x instead of the pinned 3.x: the
# product uses RQ's public API only and must work with both. RQ 2.x is installed into its own
# directory, ahead of the pinned one on the path; the venv itself is left as it is.
RQ2 := $(VENV)/rq2
test-rq2: install
	$(BIN)/pip install --quiet --upgrade --no-deps --target $(RQ2) 'rq>=2,<3'
	PYTHONPATH=$(RQ2) $(BIN)/python -c 'import rq, sys; print("rq", rq.__version__); sys.exit(rq.__version__[0] != "2")'
	PYTHONPATH=$(RQ2) $(BIN)/python -m pytest -m rq -p no:cacheprovider $(PYTEST_ARGS)

# flake8, the formatter's check (ruff.toml) and the type checker: what CI runs before the tests.
lint: install typecheck
	$(BIN)/flake8 .
	$(BIN)/ruff format --check .

# mypy over every package (setup.cfg [mypy] lists them); unused `type: ignore`s are errors.
typecheck: install
	$(BIN)/mypy

# Rewrites every file with the one formatter (ruff.toml). One command: rerun it after merges.
format: install
	$(BIN)/ruff format .

# Every benchmark (benchmarks/), side by side, then a table of the figures and their targets.
# Needs Redis and PostgreSQL (BENCH_REDIS_URL, BENCH_DATABASE_URL: db 14 and `bench` by default)
# and wrk (installed from Debian when missing and run as root). BENCH_ARGS=--quick: a smoke run.
bench: install
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		{ echo "bench: wrk is needed (apt-get install wrk)"; exit 1; }
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build dist
