# Sweeps (method §12): grids of conditions from config `sweeps`. Their runs are ordinary training
# jobs (rule train, experiment `sweep`, condition {sweep}/{base}/{field}~{value}/...), aggregated
# per point like any condition (rule aggregate, rows in the summary). Here: each sweep's tables, one
# row per run and the points over seeds, and its sensitivity figure. Both are cheap and run locally.

# Every sweep's tables and figure (rule all takes them; `snakemake sweeps` builds these alone).
SWEEP_TARGETS = [path for sweep in SWEEPS for path in [
    *sweep_tables(sweep).values(), *expand(results(f"figures/sweep_{sweep}.{{format}}"), format=FORMATS)]]


rule sweeps:
    """Every sweep's tables and sensitivity figure, and what they are made from (no other experiment)."""
    input:
        SWEEP_TARGETS,


rule sweep_table:
    """One row per run of a sweep (coordinates, status, accuracies, angles), and each point over seeds."""
    input:
        runs=sweep_runs,
    output:
        runs=results("sweeps/{sweep}/runs.csv"),
        points=results("sweeps/{sweep}/points.csv"),
        meta=results("sweeps/{sweep}/sweep.json"),
    params:
        sweep=lambda wildcards: SWEEPS[wildcards.sweep],
        settings=ANALYSIS_SETTINGS,
        code=SWEEP_CODE,
        upstream=upstream(sweep_runs),
    wildcard_constraints:
        sweep=one_of(SWEEPS or ["none"]),
    log:
        results("logs/sweep_table/{sweep}.log"),
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    message:
        "Tables of sweep {wildcards.sweep}"
    script:
        "../scripts/sweep_table.py"


rule figure_sweep:
    """A sweep's metric against one swept field, median and min-max over seeds (fa_analysis.figures.plot_sweep)."""
    input:
        unpack(sweep_table_inputs),
    output:
        report(expand(results("figures/sweep_{{sweep}}.{format}"), format=FORMATS), caption="../report/sweep.rst",
               category="Sweeps"),
    params:
        options=sweep_figure_options,
        groups={},
        code=CODE["figures"],
        upstream=upstream(sweep_table_inputs),
    wildcard_constraints:
        sweep=one_of(SWEEPS or ["none"]),
    log:
        results("logs/figures/sweep_{sweep}.log"),
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    message:
        "Drawing the sensitivity figure of sweep {wildcards.sweep}"
    script:
        "../scripts/figure.py"


for sweep in SWEEPS:
    made(list(sweep_tables(sweep).values()), sweep=SWEEPS[sweep], settings=ANALYSIS_SETTINGS, code=SWEEP_CODE,
         upstream=upstream(sweep_runs)(job(sweep=sweep)))
