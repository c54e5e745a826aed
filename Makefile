# Two entry points, each setting everything up on a fresh machine:
#   make run    the pipeline on the embedded default config (config.yaml)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
CORES ?= 2
# pytest-xdist workers for make test (one per core; the shared smoke run is computed once)
TEST_WORKERS ?= 2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

.PHONY: install run test lint
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(VENV)/.installed
	$(VENV)/bin/snakemake --lint
