"""Rule prepare_data: fa_analysis.cli.prepare_data_job. data.root / data.download come from the
config (where MNIST is, not what is computed), so they are not params."""

from fa_analysis import cli

with cli.job_log(snakemake.log[0]):
    data = snakemake.config["data"]
    cli.prepare_data_job(data["root"], data["download"], snakemake.params.data, snakemake.output[0])
