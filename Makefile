# The two commands a newcomer needs are `make up` (the whole pipeline, live view) and
# `make test` (lint, types, all tests). Both set up what they need first.
.PHONY: setup up test lint unit lock clean

VENV := .venv/bin

setup:
	@scripts/setup.sh

up: setup
	$(VENV)/depotwatch up

lint: setup
	$(VENV)/ruff check schemas services tests
	$(VENV)/ruff format --check schemas services tests
	$(VENV)/mypy
	$(VENV)/lint-imports

# pytest exits 5 when it collects no tests; make treats that as a failure, as it should.
test: lint
	$(VENV)/pytest

unit: setup
	$(VENV)/pytest -m "not integration"

lock:
	uv pip compile -q pyproject.toml --extra all --extra dev -p 3.11 -o requirements.lock

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
