"""Rule trajectory_pca: fa_analysis.cli.pca_job."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    cli.pca_job(snakemake.input.runs, snakemake.input.dataset, snakemake.params.settings,
                snakemake.output.npz, snakemake.output.meta, snakemake.params.analysis)
