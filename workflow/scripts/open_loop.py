"""Rule open_loop: fa_analysis.cli.open_loop_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.open_loop_job(snakemake.params.settings, snakemake.wildcards.scenario, snakemake.output.table)
