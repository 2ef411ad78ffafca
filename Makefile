# Two entry points: `make run` (the full workflow) and `make test` (the test suite).
# Both create or reuse the virtual environment in $(VENV), pinned by constraints.txt.
VENV ?= .venv
PYTHON ?= python3
CORES ?= 8
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: run smoke test install report clean-venv

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	    echo "make: PYTHON=$(PYTHON) is "$$($(PYTHON) --version 2>&1 | head -n 1)", but the venv needs Python >= 3.11." >&2; \
	    echo "      Name one that is, e.g.: make $(or $(MAKECMDGOALS),install) PYTHON=python3.11" >&2; exit 1; }
	@echo "[1/3] creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	@echo "[2/3] upgrading pip"
	$(VENV)/bin/python -m pip install --upgrade pip
	@echo "[3/3] installing fa-analysis and its pinned dependencies (constraints.txt; torch is large: minutes)"
	$(VENV)/bin/python -m pip install -c constraints.txt -e '.[test,slurm]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

smoke: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile tests/smoke/config.yaml $(SNAKEMAKE_ARGS)

report: $(STAMP)
	$(VENV)/bin/snakemake --report report.html $(SNAKEMAKE_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
