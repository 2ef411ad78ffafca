"""Rule train: fa_analysis.cli.train_job, with the rule's threads."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.train_job(
        snakemake.params.spec,
        snakemake.threads,
        snakemake.input.dataset,
        snakemake.input.get("labels"),
        snakemake.output[0],
    )
