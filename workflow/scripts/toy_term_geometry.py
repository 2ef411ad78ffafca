"""Rule toy_term_geometry: fa_analysis.toy_geometry.term_geometry_job."""

from fa_analysis import cli
from fa_analysis.toy_geometry import term_geometry_job

with cli.job_log(snakemake.log[0]):
    term_geometry_job(snakemake.params.settings, snakemake.output.angles, snakemake.output.spectrum)
