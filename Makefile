# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint types unit huey-suite docs bench fuzz soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/versioned-tasks demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: $(STAMP_DEV)
	$(BIN)/mypy

unit: $(STAMP_DEV)
	$(BIN)/pytest

# Huey's own test suite, once with pickle and once with VersionedSerializer
# (needs Redis and PostgreSQL; see docs/huey-suite.md).
huey-suite: $(STAMP_DEV)
	$(BIN)/python scripts/huey_suite.py

docs: $(STAMP_DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: lint types unit huey-suite docs

# Long property runs, not part of `make test`: 50 times the usual cases.
fuzz: $(STAMP_DEV)
	VT_FUZZ=50 $(BIN)/pytest tests/test_envelope.py tests/test_schema_check.py -p no:cacheprovider

# Long reliability runs, not part of `make test`: floods of 10,000 bad messages,
# 20 kills per storage, 100,000 fuzz inputs; the figures are printed (-s).
# VT_SOAK_SEED=<seed> replays a run's seed.
soak: $(STAMP_DEV)
	VT_SOAK=1 $(BIN)/pytest tests/test_reliability.py -p no:cacheprovider -s

# The serializer alone, then a short end-to-end run through real consumers
# (Redis, SQLite, and PostgreSQL when reachable; benchmarks/end_to_end.py --help).
bench: $(STAMP_DEV)
	$(BIN)/python benchmarks/serializer.py
	$(BIN)/python benchmarks/end_to_end.py --n 2000 --rounds 2

clean:
	rm -rf $(VENV) site .mypy_cache .ruff_cache .pytest_cache .hypothesis
