# wsiscan: every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
OUT ?= out
SLIDE ?=
ARGS ?=
BIN := $(VENV)/bin

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
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
