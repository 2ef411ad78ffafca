# fa-alignment: weight alignment in feedback alignment (BP-TAW), from MNIST to every figure.
#
#   snakemake --cores 8                                      the full protocol of config.yaml
#   snakemake --cores 2 --configfile tests/smoke/config.yaml the same DAG in a few minutes
#   snakemake --profile profiles/slurm                       on a SLURM cluster
#   snakemake --report report.html                           every figure with its caption
#   snakemake --cores 2 --configfile config.yaml configs/sensitivity.yaml -- sweeps
#                                                            a grid of conditions alone (method §12)
#
# The science lives in the package fa_analysis; every rule is a thin call into it. Each job's
# params are only the config slice it uses (for a training job: its run spec), plus a hash of the
# package code it runs, so an edit reruns exactly the jobs it affects (README, "Configuration
# and reruns after a config edit").

from snakemake.utils import min_version

from fa_analysis.config import SCHEMA_PATH, validate

min_version("9.0")


configfile: "config.yaml"


# Schema defaults, types, ranges, unknown keys, then the cross-field rules (gamma only with wn,
# known condition names, sizes): a bad config stops here, before any job, naming the key. The
# schema is package data of fa_analysis (fa_analysis/schemas/), beside the code that checks it.
validate(config, SCHEMA_PATH)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/mechanisms.smk"
include: "workflow/rules/open_loop.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/sweeps.smk"
include: "workflow/rules/figures.smk"


rule all:
    """Every figure (PNG and PDF by default), the summary table and every sweep's tables."""
    input:
        figures=expand(results("figures/{name}.{format}"), name=FIGURE_INPUTS, format=FORMATS),
        summary=[results("tables/summary.csv"), results("tables/summary.md")],
        sweeps=SWEEP_TARGETS,
