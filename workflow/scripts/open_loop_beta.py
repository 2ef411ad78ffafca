"""Rule open_loop_beta: fa_analysis.cli.beta_sweep_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.beta_sweep_job(snakemake.params.settings, snakemake.wildcards.wn == "1", snakemake.output.table)
