"""Rule trajectory_umap: fa_analysis.cli.umap_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.umap_job(snakemake.input.runs, snakemake.params.settings, snakemake.output.table, snakemake.output.meta,
                 snakemake.params.analysis)
