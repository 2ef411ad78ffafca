"""Rule toy_depth: fa_analysis.toy_geometry.depth_job."""

from fa_analysis import cli
from fa_analysis.toy_geometry import depth_job

with cli.job_log(snakemake.log[0]):
    depth_job(snakemake.params.settings, snakemake.output.table)
