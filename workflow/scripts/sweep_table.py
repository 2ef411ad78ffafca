"""Rule sweep_table: fa_analysis.cli.sweep_table_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.sweep_table_job(
        snakemake.input.runs,
        snakemake.params.sweep,
        snakemake.wildcards.sweep,
        snakemake.params.settings,
        snakemake.output.runs,
        snakemake.output.points,
        snakemake.output.meta,
    )
