"""Rule toy_autocorrelation: fa_analysis.toy_closed_net.autocorrelation_job."""

from fa_analysis import cli
from fa_analysis.toy_closed_net import autocorrelation_job

with cli.job_log(snakemake.log[0]):
    autocorrelation_job(snakemake.params.settings, snakemake.wildcards.sweep, snakemake.wildcards.toy_wn == "1",
                        snakemake.output.table)
