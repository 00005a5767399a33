# wsiscan: every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
OUT ?= out
SLIDE ?=
ARGS ?=
# pytest-xdist workers of `make test` / `make test-fast` (one per core of the 2-core CI machine)
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install predict tile test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,viewer,serve]"
	touch $@

install: $(VENV)/.installed

predict: $(VENV)/.installed
	@test -n "$(SLIDE)" || { echo "usage: make predict SLIDE=path/to/slide.svs [OUT=out] [ARGS='--model ...']"; exit 2; }
	$(BIN)/wsiscan predict $(SLIDE) -o $(OUT) $(ARGS)

tile: $(VENV)/.installed
	@test -n "$(SLIDE)" || { echo "usage: make tile SLIDE=path/to/slide.svs [OUT=out]"; exit 2; }
	$(BIN)/wsiscan tile $(SLIDE) -o $(OUT) $(ARGS)

test: $(VENV)/.installed
	$(PYTEST)

test-fast: $(VENV)/.installed
	$(PYTEST) -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
