"""Rule aggregate: fa_analysis.cli.aggregate_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.aggregate_job(snakemake.input.runs, snakemake.output[0], snakemake.params.settings)
