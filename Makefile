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
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,slurm]'
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
