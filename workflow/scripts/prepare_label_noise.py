"""Rule prepare_label_noise: fa_analysis.cli.label_noise_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.label_noise_job(snakemake.input[0], int(snakemake.wildcards.level), snakemake.params.seed, snakemake.output[0])
