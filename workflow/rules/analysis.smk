# Analysis stage (method §8, §9): mean and sd over seeds per condition, the weight-trajectory
# embeddings, and the summary table. Aggregation and the table are cheap and run locally.

PCA_SETTINGS = config_slice(config["embedding"], ("pca_grid", "pca_margin", "landscape_train_subset"))
UMAP_SETTINGS = config_slice(config["embedding"]["umap"], ("n_neighbors", "min_dist", "seed", "max_points"))
# What a run's outcome is (completed, diverged, collapsed): runs.csv and the embeddings' labels use it.
ANALYSIS_SETTINGS = config_slice(config["analysis"], ("collapse_margin",))
TRAJECTORY_RUNS = experiment_runs("trajectory")
SUMMARY_INPUTS = [path for experiment in RUNS for path in aggregated(experiment).values()]


rule aggregate:
    """Mean and sd over the seeds of one experiment/condition, and one row per run (runs.csv)."""
    input:
        runs=condition_runs,
    output:
        directory(results("aggregated/{experiment}/{condition}")),
    params:
        settings=ANALYSIS_SETTINGS,
        code=CODE["aggregate"],
        upstream=upstream(condition_runs),
    log:
        results("logs/aggregate/{experiment}/{condition}.log"),
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        ENV
    message:
        "Aggregating {wildcards.experiment}/{wildcards.condition} over its seeds"
    script:
        "../scripts/aggregate.py"


rule trajectory_pca:
    """One joint PCA of every method's weight snapshots, with the loss landscape of its plane."""
    input:
        runs=TRAJECTORY_RUNS,
        dataset=results("data/mnist15.npz"),
    output:
        npz=results("embedding/trajectory_pca.npz"),
        meta=results("embedding/trajectory_pca.json"),
    params:
        settings=PCA_SETTINGS,
        analysis=ANALYSIS_SETTINGS,
        code=CODE["embedding"],
        upstream=upstream(TRAJECTORY_RUNS, results("data/mnist15.npz")),
    log:
        results("logs/trajectory_pca/trajectory_pca.log"),
    benchmark:
        results("benchmarks/trajectory_pca/trajectory_pca.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(2610),
        runtime=measured_runtime(47),
    conda:
        ENV
    message:
        "Joint PCA of the weight trajectories with the loss landscape"
    script:
        "../scripts/trajectory_pca.py"


rule trajectory_umap:
    """UMAP of the same weight snapshots."""
    input:
        runs=TRAJECTORY_RUNS,
    output:
        table=results("embedding/trajectory_umap.parquet"),
        meta=results("embedding/trajectory_umap.json"),
    params:
        settings=UMAP_SETTINGS,
        analysis=ANALYSIS_SETTINGS,
        code=CODE["embedding"],
        upstream=upstream(TRAJECTORY_RUNS),
    log:
        results("logs/trajectory_umap/trajectory_umap.log"),
    benchmark:
        results("benchmarks/trajectory_umap/trajectory_umap.tsv")
    threads: 1
    resources:
        mem_mb=measured_mem_mb(2265),
        runtime=measured_runtime(173),
    conda:
        ENV
    message:
        "UMAP of the weight trajectories"
    script:
        "../scripts/trajectory_umap.py"


rule summary:
    """Final test accuracy and per-layer angle(W_l, B_l^T), mean +- sd, per experiment/condition."""
    input:
        aggregated=SUMMARY_INPUTS,
    output:
        csv=report(results("tables/summary.csv"), caption="../report/summary.rst", category="Tables"),
        md=results("tables/summary.md"),
    params:
        code=CODE["aggregate"],
        upstream=upstream(SUMMARY_INPUTS),
    log:
        results("logs/summary/summary.log"),
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    message:
        "Summary table of every experiment/condition"
    script:
        "../scripts/summary.py"


for experiment, conditions in RUNS.items():
    for condition in conditions:
        made([results(f"aggregated/{experiment}/{condition}")], settings=ANALYSIS_SETTINGS, code=CODE["aggregate"],
             upstream=upstream(condition_runs)(job(experiment=experiment, condition=condition)))
made([results("embedding/trajectory_pca.npz"), results("embedding/trajectory_pca.json")], settings=PCA_SETTINGS,
     analysis=ANALYSIS_SETTINGS, code=CODE["embedding"],
     upstream=upstream(TRAJECTORY_RUNS, results("data/mnist15.npz"))(job()))
made([results("embedding/trajectory_umap.parquet"), results("embedding/trajectory_umap.json")],
     settings=UMAP_SETTINGS, analysis=ANALYSIS_SETTINGS, code=CODE["embedding"],
     upstream=upstream(TRAJECTORY_RUNS)(job()))
