# Open-loop stage (method §7): the 20-100-20 network with imposed input L_0 and output error delta_2.
# Independent of MNIST and of every training job. A scenario's params leave out the beta sweep
# and the list of scenarios, so editing those reruns only what they change.

OPEN_LOOP_NETWORK = config_slice(
    OPEN_LOOP, ("sizes", "batch_size", "eta", "iterations", "repetitions", "init_std", "seed")
)
BETA_SWEEP = config_slice(OPEN_LOOP["beta_sweep"], ("betas", "gamma", "input"))
BETA_SETTINGS = {**OPEN_LOOP_NETWORK, "beta_sweep": BETA_SWEEP}


rule open_loop:
    """angle(W_1, B_1^T) over iterations for one correlation scenario, every repetition."""
    output:
        table=results("open_loop/{scenario}.parquet"),
        meta=results("open_loop/{scenario}.json"),
    params:
        settings=OPEN_LOOP_NETWORK,
        code=CODE["open_loop"],
    log:
        results("logs/open_loop/{scenario}.log"),
    benchmark:
        results("benchmarks/open_loop/{scenario}.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(750),
        runtime=measured_runtime(10),
    conda:
        ENV
    message:
        "Open loop, scenario '{wildcards.scenario}'"
    script:
        "../scripts/open_loop.py"


rule open_loop_beta:
    """Final angle(W_1, B_1^T) vs beta, the autocorrelation of the imposed error; wn = 0 / 1."""
    output:
        table=results("open_loop/beta_wn{wn}.parquet"),
        meta=results("open_loop/beta_wn{wn}.json"),
    params:
        settings=BETA_SETTINGS,
        code=CODE["open_loop"],
    log:
        results("logs/open_loop_beta/beta_wn{wn}.log"),
    benchmark:
        results("benchmarks/open_loop_beta/beta_wn{wn}.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(600),
        runtime=measured_runtime(25),
    conda:
        ENV
    message:
        "Open loop, beta sweep with wn = {wildcards.wn}"
    script:
        "../scripts/open_loop_beta.py"


for scenario in OPEN_LOOP["scenarios"]:
    made([results(f"open_loop/{scenario}.{suffix}") for suffix in ("parquet", "json")],
         settings=OPEN_LOOP_NETWORK, code=CODE["open_loop"])
for wn in OPEN_LOOP["beta_sweep"]["wn"]:
    made([results(f"open_loop/beta_wn{int(wn)}.{suffix}") for suffix in ("parquet", "json")],
         settings=BETA_SETTINGS, code=CODE["open_loop"])
