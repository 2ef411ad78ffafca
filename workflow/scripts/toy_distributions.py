"""Rule toy_distributions: fa_analysis.toy_geometry.distributions_job."""

from fa_analysis import cli
from fa_analysis.toy_geometry import distributions_job

with cli.job_log(snakemake.log[0]):
    distributions_job(snakemake.params.settings, snakemake.output.table)
