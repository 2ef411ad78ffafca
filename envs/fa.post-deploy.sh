#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment of envs/fa.yaml, once, after creating it:
# install the fa_analysis package of this checkout, editable, without touching the pinned
# dependencies. Snakemake runs it from its working directory, the repository root; set
# FA_ALIGNMENT_ROOT to the checkout when running the workflow with --directory elsewhere.
set -euo pipefail
root=${FA_ALIGNMENT_ROOT:-$PWD}
if [[ ! -f $root/pyproject.toml || ! -d $root/fa_analysis ]]; then
    echo "fa.post-deploy.sh: $root is not the fa-alignment checkout; set FA_ALIGNMENT_ROOT" >&2
    exit 1
fi
python -m pip install --no-deps --editable "$root"
