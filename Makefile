# Two entry points: `make run` (the full workflow) and `make test` (the test suite).
# Both create or reuse the virtual environment in $(VENV), pinned by constraints.txt.
# `make data` downloads MNIST into data/ (config.yaml's data.root), where both find it.
VENV ?= .venv
PYTHON ?= python3
CORES ?= 8
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
# Extra options for pip's install of the package, e.g. torch's CPU-only build (README, Quick start):
# PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
PIP_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: run smoke test install data report clean-venv

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	    echo "make: PYTHON=$(PYTHON) is "$$($(PYTHON) --version 2>&1 | head -n 1)", but the venv needs Python >= 3.11." >&2; \
	    echo "      Name one that is, e.g.: make $(or $(MAKECMDGOALS),install) PYTHON=python3.11" >&2; exit 1; }
	@echo "[1/3] creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	@echo "[2/3] upgrading pip"
	$(VENV)/bin/python -m pip install --upgrade pip
	@echo "[3/3] installing fa-analysis and its pinned dependencies (constraints.txt; torch is large: minutes)"
	$(VENV)/bin/python -m pip install -c constraints.txt $(PIP_ARGS) -e '.[test,slurm]'
	touch $(STAMP)

install: $(STAMP)

# torchvision's download of MNIST (train and test) into data/MNIST/raw; nothing else. A socket
# timeout makes a stalled connection fail instead of hanging.
define DOWNLOAD_MNIST
import socket, sys
from torchvision.datasets import MNIST
socket.setdefaulttimeout(60)
try:
    for train in (True, False):
        MNIST(root="data", train=train, download=True)
except Exception as err:
    sys.exit(f"make data: could not download MNIST into data/MNIST/raw: {err}\n"
             "On a machine without internet, copy the four *-ubyte files of MNIST into data/MNIST/raw/, "
             "or run the tests with FA_MNIST_ROOT=/path/to/mnist make test.")
print("make data: MNIST is in data/MNIST/raw")
endef
export DOWNLOAD_MNIST

data: $(STAMP)
	$(VENV)/bin/python -c "$$DOWNLOAD_MNIST"

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
