# Training stage (method §5, §6, §8): one job per (experiment, condition, seed) of every experiment.
# The job's params are its run spec (config.run_specs) and the hash of the code it runs: editing
# one condition's eta reruns exactly the runs of that condition and what is computed from them.


rule train:
    """Train one network with its learning rule; per-iteration metrics, evaluations, weights."""
    input:
        unpack(train_inputs),
    output:
        directory(results("runs/{experiment}/{condition}/seed{seed}")),
    params:
        spec=run_spec,
        code=train_code,
        upstream=upstream(train_inputs),
    log:
        results("logs/train/{experiment}/{condition}/seed{seed}.log"),
    benchmark:
        results("benchmarks/train/{experiment}/{condition}/seed{seed}.tsv")
    threads: config["training"]["threads"]
    priority: train_priority
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    conda:
        ENV
    message:
        "Training {wildcards.experiment}/{wildcards.condition}, seed {wildcards.seed}"
    script:
        "../scripts/train.py"


for experiment, condition, seed in SPECS:
    run = job(experiment=experiment, condition=condition, seed=seed)
    made([run_dir(experiment, condition, seed)], spec=run_spec(run), code=train_code(run),
         upstream=upstream(train_inputs)(run))
