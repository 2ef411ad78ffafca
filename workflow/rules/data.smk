# Data stage (method §4): MNIST resized to 15x15 once, and the fixed draws of noisy labels.
# data.root and data.download say where MNIST is, not what is computed: they are read from the
# config by the script and are not params, so moving the files reruns nothing.

DATA_SETTINGS = config_slice(config["data"], ("image_size", "train_subset", "test_subset"))


rule prepare_data:
    """MNIST -> pixels / 255, 28x28 -> 15x15 bilinear without antialiasing, flattened."""
    output:
        results("data/mnist15.npz"),
    params:
        data=DATA_SETTINGS,
        code=CODE["data"],
    log:
        results("logs/prepare_data/mnist15.log"),
    benchmark:
        results("benchmarks/prepare_data/mnist15.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(1100),
        runtime=measured_runtime(10),
    conda:
        ENV
    message:
        "Preparing MNIST ({params.data}) from {config[data][root]}"
    script:
        "../scripts/prepare_data.py"


rule prepare_label_noise:
    """A fraction `level` % of the training labels replaced by uniformly random classes, drawn once."""
    input:
        results("data/mnist15.npz"),
    output:
        results("data/labels_noise{level}.npz"),
    params:
        seed=config["data"]["label_noise_seed"],
        code=CODE["data"],
        upstream=upstream(results("data/mnist15.npz")),
    log:
        results("logs/prepare_label_noise/noise{level}.log"),
    benchmark:
        results("benchmarks/prepare_label_noise/noise{level}.tsv")
    localrule: True  # seconds of work: not worth a cluster job
    threads: 1
    resources:
        mem_mb=measured_mem_mb(950),
        runtime=measured_runtime(12),
    conda:
        ENV
    message:
        "Drawing noisy labels: {wildcards.level} % of the training set"
    script:
        "../scripts/prepare_label_noise.py"


made([results("data/mnist15.npz")], data=DATA_SETTINGS, code=CODE["data"])
for level in NOISE_LEVELS:
    made([results(f"data/labels_noise{level}.npz")], seed=config["data"]["label_noise_seed"], code=CODE["data"],
         upstream=upstream(results("data/mnist15.npz"))(job(level=level)))
