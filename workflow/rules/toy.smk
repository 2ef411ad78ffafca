# Toy stage (method §11): Monte Carlo geometry of one alignment term, of changed signal statistics
# and of products of matrices, and the closed two-layer net with an imposed error. Independent of
# MNIST and of every training job. Each job's params are its own config slice, so editing one toy
# experiment reruns that experiment alone.

TOY = config["toy"]


rule toy_term_geometry:
    """angle(B^T, B^T E^T X X^T E) per shape mode, and the spectrum of E^T X X^T E (method §11.1)."""
    output:
        angles=results("toy/term_geometry.parquet"),
        angles_meta=results("toy/term_geometry.json"),
        spectrum=results("toy/term_spectrum.parquet"),
        spectrum_meta=results("toy/term_spectrum.json"),
    params:
        settings=TOY["term_geometry"],
        code=CODE["toy_geometry"],
    log:
        results("logs/toy/term_geometry.log"),
    benchmark:
        results("benchmarks/toy/term_geometry.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(1000),
        runtime=measured_runtime(60),
    conda:
        ENV
    message:
        "Toy: the geometry of one alignment term over shape modes"
    script:
        "../scripts/toy_term_geometry.py"


rule toy_distributions:
    """The same angle between two minibatches under changed signal statistics (method §11.2)."""
    output:
        table=results("toy/distributions.parquet"),
        meta=results("toy/distributions.json"),
    params:
        settings=TOY["distributions"],
        code=CODE["toy_geometry"],
    log:
        results("logs/toy/distributions.log"),
    benchmark:
        results("benchmarks/toy/distributions.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(600),
        runtime=measured_runtime(10),
    conda:
        ENV
    message:
        "Toy: the term's angle under changed signal distributions"
    script:
        "../scripts/toy_distributions.py"


rule toy_depth:
    """angle(AB, CD) against angle(A, C) and angle(B, D), linear and masked (method §11.5)."""
    output:
        table=results("toy/depth.parquet"),
        meta=results("toy/depth.json"),
    params:
        settings=TOY["depth"],
        code=CODE["toy_geometry"],
    log:
        results("logs/toy/depth.log"),
    benchmark:
        results("benchmarks/toy/depth.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(600),
        runtime=measured_runtime(15),
    conda:
        ENV
    message:
        "Toy: why alignment fades with depth, products of matrices at prescribed angles"
    script:
        "../scripts/toy_depth.py"


rule toy_closed_net:
    """angle(W_1, B_1^T) over iterations of the closed 100-100-10 net, per error regime (method §11.3)."""
    output:
        table=results("toy/closed_net_{group}.parquet"),
        meta=results("toy/closed_net_{group}.json"),
    params:
        settings=TOY["closed_net"],
        code=CODE["toy_closed_net"],
    wildcard_constraints:
        group="regimes|wn",
    log:
        results("logs/toy/closed_net_{group}.log"),
    benchmark:
        results("benchmarks/toy/closed_net_{group}.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(800),
        runtime=measured_runtime(40),
    conda:
        ENV
    message:
        "Toy: the closed net with an imposed error, {wildcards.group}"
    script:
        "../scripts/toy_closed_net.py"


rule toy_autocorrelation:
    """Final angle(W_1, B_1^T) and angle(dW_0^FA, dW_0^BP) against beta, error or input graded (method §11.4)."""
    output:
        table=results("toy/autocorrelation_{sweep}_wn{toy_wn}.parquet"),
        meta=results("toy/autocorrelation_{sweep}_wn{toy_wn}.json"),
    params:
        settings=TOY["autocorrelation"],
        code=CODE["toy_closed_net"],
    wildcard_constraints:
        sweep="error|input",
        toy_wn="0|1",
    log:
        results("logs/toy/autocorrelation_{sweep}_wn{toy_wn}.log"),
    benchmark:
        results("benchmarks/toy/autocorrelation_{sweep}_wn{toy_wn}.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(1000),
        runtime=measured_runtime(300),
    conda:
        ENV
    message:
        "Toy: graded auto-correlation of the {wildcards.sweep}, wn = {wildcards.toy_wn}"
    script:
        "../scripts/toy_autocorrelation.py"


TOY_CLOSED_NET_GROUPS = ("regimes", "wn")
TOY_AUTOCORRELATION = [(sweep, int(wn)) for sweep in ("error", "input") for wn in TOY["autocorrelation"]["wn"]]

made([results(f"toy/{name}.{suffix}") for name in ("term_geometry", "term_spectrum") for suffix in ("parquet", "json")],
     settings=TOY["term_geometry"], code=CODE["toy_geometry"])
for name in ("distributions", "depth"):
    made([results(f"toy/{name}.{suffix}") for suffix in ("parquet", "json")], settings=TOY[name], code=CODE["toy_geometry"])
for group in TOY_CLOSED_NET_GROUPS:
    made([results(f"toy/closed_net_{group}.{suffix}") for suffix in ("parquet", "json")],
         settings=TOY["closed_net"], code=CODE["toy_closed_net"])
for sweep, wn in TOY_AUTOCORRELATION:
    made([results(f"toy/autocorrelation_{sweep}_wn{wn}.{suffix}") for suffix in ("parquet", "json")],
         settings=TOY["autocorrelation"], code=CODE["toy_closed_net"])
