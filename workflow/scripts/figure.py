"""Every figure_* rule: fa_analysis.cli.figure_job for the figure the rule is named after."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.figure_job(
        snakemake.rule.removeprefix("figure_"),
        dict(snakemake.input.items()),
        list(snakemake.output),
        snakemake.params.options,
        snakemake.params.groups,
    )
