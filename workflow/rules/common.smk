# Shared by every stage: the run specs, result paths, wildcard constraints, code hashes, the
# provenance digests and the input functions. Nothing here computes science; it only says which
# files feed which job, and what they were made from.

import functools
import hashlib
import json
import math
import re
from types import SimpleNamespace

from fa_analysis.config import (
    code_hash,
    experiment_conditions,
    iterations_per_epoch,
    label_noise_levels,
    label_noise_runs,
    rules_reused,
    run_specs,
)
from fa_analysis.sweeps import EXPERIMENT as SWEEP_EXPERIMENT, sweep_layout

# One plain dict per training job, keyed by (experiment, condition, seed) (docs/design.md).
SPECS = run_specs(config)
# {experiment: {condition: [seeds]}}, in config order.
RUNS = experiment_conditions(SPECS)
NOISE_LEVELS = label_noise_levels(SPECS)
RULES_REUSED = rules_reused(config)  # the rules experiment's conditions whose runs are main's
OPEN_LOOP = config["open_loop"]
FORMATS = config["figures"]["formats"]
ENV = "../../envs/fa.yaml"


def results(path):
    """A path under the results folder (config key `results`)."""
    return f"{config['results']}/{path}"


def config_slice(section, keys):
    """The values of `keys` in config `section`, in that order (params are compared by their repr)."""
    return {key: section[key] for key in keys}


def one_of(names):
    """A wildcard constraint accepting exactly these names."""
    return "|".join(re.escape(str(name)) for name in sorted(names, key=str))


wildcard_constraints:
    experiment=one_of(RUNS),
    condition=one_of({condition for conditions in RUNS.values() for condition in conditions}),
    seed=r"\d+",
    level=one_of(NOISE_LEVELS or ["none"]),
    scenario=one_of(OPEN_LOOP["scenarios"]),
    wn=one_of(int(wn) for wn in OPEN_LOOP["beta_sweep"]["wn"]),


# --------------------------------------------------------------------------------------------
# Code hashes: a job's params carry the hash of the package modules it runs, with every package
# module they import (config.code_hash), so editing fa_analysis/network.py reruns the training
# jobs but not the figures, editing fa_analysis/figures/ redraws figures without retraining,
# and editing fa_analysis/shadow.py reruns only the shadow runs (train_code below).

CODE = {
    "data": code_hash("data"),
    "open_loop": code_hash("open_loop"),
    "aggregate": code_hash("aggregate"),
    "embedding": code_hash("embedding"),
    "figures": code_hash("figures"),
    "toy_geometry": code_hash("toy_geometry"),
    "toy_closed_net": code_hash("toy_closed_net"),
}


# --------------------------------------------------------------------------------------------
# Provenance: what each result was made from. Snakemake reruns a job whose own params changed,
# but it rebuilds a missing intermediate file only for a job that reruns anyway. So once a
# training run whose spec changed is lost (its job killed, the disk full), the aggregates, embeddings
# and figures made from its old version would look current. Every job with inputs therefore also
# carries the param `upstream`: a digest of the params of every job upstream of it (run specs,
# settings, code hashes), so that a changed upstream job changes the params of everything made
# from it. Each stage records the digest of the files it writes with `made(...)`, after its rule.
# The param is a function of the wildcards alone: Snakemake leaves params computed from a job's
# `input` out of its comparison.

MADE_FROM = {}  # {path of an output: digest of its job's params, its own `upstream` included}


def digest(*values):
    """A short hash of plain values: JSON with sorted keys, so equal values give equal digests."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def made(outputs, **params):
    """Record that `outputs` (one job's files) are made by a job with exactly these params."""
    MADE_FROM.update(dict.fromkeys(outputs, digest(params)))


def made_from(paths):
    """The digest of what the files `paths` were made from, all the way up (paths included)."""
    unknown = [path for path in paths if path not in MADE_FROM]
    if unknown:
        raise ValueError(f"no provenance for {unknown}: record the job that writes them with made(...)")
    return digest(sorted((path, MADE_FROM[path]) for path in paths))


def upstream(*inputs):
    """The `upstream` param of the jobs that read `inputs`, given as their input paths (lists, dicts),
    or the input functions that give them, called with the job's wildcards."""

    def inputs_made_from(wildcards):
        return made_from(flat([item(wildcards) if callable(item) else item for item in inputs]))

    return inputs_made_from


def flat(paths):
    """The paths in a path, a list or a dict of them, nested."""
    if isinstance(paths, str):
        return [paths]
    return [path for item in (paths.values() if isinstance(paths, dict) else paths) for path in flat(item)]


def job(**wildcards):
    """Wildcard values as the input and params functions take them (for `made(...)`)."""
    return SimpleNamespace(**wildcards)


# --------------------------------------------------------------------------------------------
# Training runs


def run_dir(experiment, condition, seed):
    return results(f"runs/{experiment}/{condition}/seed{seed}")


def run_spec(wildcards):
    """The run spec of one training job: the only config its params carry."""
    key = (wildcards.experiment, wildcards.condition, int(wildcards.seed))
    if key not in SPECS:
        raise ValueError(
            f"no training run {'/'.join(map(str, key))} in the config: the runs of "
            f"'{key[0]}' are {', '.join(RUNS.get(key[0], {}))} with their seeds"
        )
    return SPECS[key]


def train_code(wildcards):
    """The training code of one run: the engine, and the observer modules its spec names."""
    return training_code_hash(*run_spec(wildcards)["observers"])


@functools.cache
def training_code_hash(*observers):
    return code_hash("train", *observers)


def train_inputs(wildcards):
    """The prepared data set, and the noisy labels when the run uses label noise."""
    inputs = {"dataset": results("data/mnist15.npz")}
    level = run_spec(wildcards)["label_noise"]
    if level > 0:
        inputs["labels"] = results(f"data/labels_noise{level}.npz")
    return inputs


def history_steps_and_pairs(spec):
    """(steps stored, past-step visits) of a run's whole-history sums (fa_analysis.history).

    The random-B' shadow sums over every past step at every step; the remainder at the iterations
    it measures. Both set the job's memory and time, which grow with the run's length.
    """
    K = spec["epochs"] * iterations_per_epoch(config)
    observers = spec["observers"]
    if "shadow" in observers:
        return K - 1, K * (K - 1) // 2
    if "remainder" in observers:
        settings = observers["remainder"]
        every = settings["every"]
        measured = {k for k in settings["iterations"] if k < K} | (set(range(0, K, every)) if every else set())
        return max(measured, default=0), sum(measured)
    return 0, 0


def network_scale(spec):
    """Numbers per layer pair of the history, relative to the protocol's 225-50-50-50-50-50 network."""
    sizes = spec["sizes"]
    return sum(sizes[l - 1] * sizes[l] for l in range(1, len(sizes) - 1)) / 18750


# --------------------------------------------------------------------------------------------
# Resources on a cluster, from the measured benchmark files (results/benchmarks, summarised by
# benchmarks/cost_table.py) of the protocol's runs on one core (CPU seconds, peak RSS):
#   train, main (6,000 iterations, no observer)       ~22 s CPU, 755 MB
#   train, label_change (12,000 iterations)           ~35 s CPU
#   train, terms (1,500 iterations, alignment terms)  27-34 s CPU, 1,050-1,960 MB
#   train, remainder (1,800 iterations, 27k visits)   ~63 s CPU, 1,300 MB (260 MB of it history)
#   train, shadow (600 iterations, 180k visits)       ~324 s CPU, 1,100 MB
#   prepare_data 9 s, 1,090 MB; prepare_label_noise 5 s, 930 MB; open_loop 6 s, 730 MB;
#   open_loop_beta 15 s, 600 MB
# and of the full protocol's end-to-end run on 2 cores (benchmarks/results.md; wall seconds per
# job, two jobs at a time, peak RSS): main 57 s, label_noise 43 s, label_change 51 s, terms 37 s,
# remainder 57 s, shadow 334 s, every training run under 1,070 MB; trajectory_pca 47 s, 2,610 MB;
# trajectory_umap 173 s, 2,265 MB. Every training run stayed inside the limits below.
# Every request is the measured cost times a margin (RESOURCE_MARGIN: memory x1.5, time x2, since
# a node may be slower than the machine that measured), and grows with the attempt: a job that
# SLURM killed for memory or time is retried (profile key `retries`) with twice, three times, ...
# its first request. Locally (no profile) attempt is 1 and nothing here limits a job.

RESOURCE_MARGIN = {"mem_mb": 1.5, "runtime": 2.0}
MIN_RUNTIME = 2  # minutes: no SLURM time limit below this
# Training job: start-up (Snakemake's job, `import torch`, the data set) and seconds per iteration
# without / with observers, seconds per past-step visit of the whole-history sums (protocol's network).
TRAIN_START_S = 15
TRAIN_ITERATION_S = {False: 0.004, True: 0.025}
HISTORY_VISIT_S = 0.002
# Peak memory of a training job before its whole-history storage: without / with observers.
TRAIN_PEAK_MB = {False: 1000, True: 1400}


def mem_mb_for(peak_mb, attempt):
    """Memory to request for a measured peak: times the margin, times the attempt."""
    return math.ceil(peak_mb * RESOURCE_MARGIN["mem_mb"]) * attempt


def runtime_for(seconds, attempt):
    """Minutes to request for a measured duration: times the margin, at least MIN_RUNTIME, times the attempt."""
    return max(MIN_RUNTIME, math.ceil(seconds * RESOURCE_MARGIN["runtime"] / 60)) * attempt


def measured_mem_mb(peak_mb):
    """A rule's `mem_mb` from its measured peak (MB), growing with the attempt."""
    return lambda wildcards, attempt: mem_mb_for(peak_mb, attempt)


def measured_runtime(seconds):
    """A rule's `runtime` from its measured duration (seconds), growing with the attempt."""
    return lambda wildcards, attempt: runtime_for(seconds, attempt)


def train_seconds(spec):
    """The measured cost model of a training job: start-up, its iterations and its whole-history visits."""
    iterations = spec["epochs"] * iterations_per_epoch(config)
    _, pairs = history_steps_and_pairs(spec)
    return (TRAIN_START_S + iterations * TRAIN_ITERATION_S[bool(spec["observers"])]
            + pairs * HISTORY_VISIT_S * network_scale(spec))


def train_runtime(wildcards, attempt):
    """Minutes a training job may take (SLURM's time limit): its cost, times the margin and the attempt."""
    return runtime_for(train_seconds(run_spec(wildcards)), attempt)


def train_priority(wildcards):
    """Longest first: a training job's priority is its expected seconds, so that the few long runs
    (the shadow and remainder runs' whole-history sums, the 200-epoch label change) start early
    instead of leaving one core busy at the end while the others idle."""
    return round(train_seconds(run_spec(wildcards)))


def train_mem_mb(wildcards, attempt):
    """Memory of a training job: the measured peak, plus the whole-history sums' 150 kB per stored
    step for the protocol's network in float32 (twice in float64), times the margin and the attempt."""
    spec = run_spec(wildcards)
    steps, _ = history_steps_and_pairs(spec)
    itemsize = 8 if spec["dtype"] == "float64" else 4
    history_mb = steps * 2 * 18750 * network_scale(spec) * itemsize / 1e6
    peak_mb = TRAIN_PEAK_MB[bool(spec["observers"])] + history_mb
    return mem_mb_for(peak_mb, attempt)


def condition_runs(wildcards):
    """Every seed's run directory of one experiment/condition."""
    seeds = RUNS[wildcards.experiment][wildcards.condition]
    return [run_dir(wildcards.experiment, wildcards.condition, seed) for seed in seeds]


def experiment_runs(experiment):
    """Every run directory of one experiment, all conditions and seeds."""
    return [run_dir(experiment, condition, seed) for condition, seeds in RUNS[experiment].items() for seed in seeds]


# --------------------------------------------------------------------------------------------
# Aggregates and figures


def aggregated(experiment, conditions=None):
    """Aggregated directories of an experiment's conditions, as {condition: path}."""
    names = RUNS[experiment] if conditions is None else conditions
    return {name: results(f"aggregated/{experiment}/{name}") for name in names}


def conditions_with_rule(experiment, rule):
    """The experiment's conditions whose learning rule is `rule` (bp / fa / dfa)."""
    return [name for name in RUNS[experiment] if config["conditions"][name]["rule"] == rule]


def figure(name):
    """The figure's files, one per format, for the report with the caption of that figure."""
    return report(
        expand(results(f"figures/{name}.{{format}}"), format=FORMATS),
        caption=f"../report/{name}.rst",
        category="Figures",
    )


# --------------------------------------------------------------------------------------------
# Sweeps (method §12; workflow/rules/sweeps.smk): their runs are training runs of experiment `sweep`

# {sweep: {protocol, fields, points, seeds, last_epochs}}: the params of its table job.
SWEEPS = sweep_layout(config)
SWEEP_CODE = code_hash("sweep_table")


def sweep_runs(wildcards):
    """Every run directory of one sweep: each point with each of its seeds."""
    return [run_dir(SWEEP_EXPERIMENT, point, seed) for point in SWEEPS[wildcards.sweep]["points"]
            for seed in RUNS[SWEEP_EXPERIMENT][point]]


def sweep_tables(sweep):
    """The tables of one sweep, by file name."""
    return {name: results(f"sweeps/{sweep}/{name}") for name in ("runs.csv", "points.csv", "sweep.json")}


def sweep_table_inputs(wildcards):
    """What a sweep's figure reads: its points over seeds and its grid."""
    tables = sweep_tables(wildcards.sweep)
    return {"points": tables["points.csv"], "meta": tables["sweep.json"]}


def sweep_figure_options(wildcards):
    """The figure's settings (metric, x): a change redraws the figure, nothing upstream of it."""
    return dict(config["sweeps"][wildcards.sweep]["figure"])
