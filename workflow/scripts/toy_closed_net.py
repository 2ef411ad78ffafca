"""Rule toy_closed_net: fa_analysis.toy_closed_net.closed_net_job."""

from fa_analysis import cli
from fa_analysis.toy_closed_net import closed_net_job

with cli.job_log(snakemake.log[0]):
    closed_net_job(snakemake.params.settings, snakemake.wildcards.group, snakemake.output.table)
