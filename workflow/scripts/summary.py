"""Rule summary: fa_analysis.cli.summary_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.summary_job(snakemake.input.aggregated, snakemake.output.csv, snakemake.output.md)
