"""Small synthetic run directories in the documented run-artifact format (docs/design.md).

The aggregation, embedding and figure tests build these instead of training: values are drawn
from a seeded generator, so every expected number is computed independently in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SIZES = [6, 5, 5, 10]  # d = 3: W_0, W_1, W_2; B_1, B_2


def metric_columns(d: int) -> list[str]:
    return (["loss", "angle_W_Bt_all"] + [f"angle_W_Bt_{l}" for l in range(1, d)]
            + [f"angle_dWfa_dWbp_{l}" for l in range(d)] + [f"norm_W_{l}" for l in range(d)])


def write_run(root: Path, experiment: str, condition: str, seed: int, *, iterations: int = 40,
              per_epoch: int = 10, diverge_at: int | None = None, sizes=SIZES, phases=None,
              rule: str = "fa", weights: bool = True, test_accuracy=None) -> Path:
    """One run directory with metrics, evaluation, weights and run.json; values seeded by ``seed``.

    ``diverge_at`` = k: the metrics stop at k with a NaN loss row there and the status is diverged.
    ``test_accuracy``: the evaluation table's accuracies, one per evaluation row (default: a seeded
    rise from 0.1).
    """
    rng = np.random.default_rng(seed)
    d = len(sizes) - 1
    run_dir = root / "runs" / experiment / condition / f"seed{seed}"
    run_dir.mkdir(parents=True)
    K = iterations if diverge_at is None else diverge_at + 1
    k = np.arange(K)
    metrics = pd.DataFrame({"iteration": k, "epoch": k // per_epoch})
    for column in metric_columns(d):
        metrics[column] = 90.0 - 30.0 * k / iterations + rng.normal(0.0, 3.0, K)
    if diverge_at is not None:
        metrics.loc[K - 1, ["loss", "angle_W_Bt_all", "angle_W_Bt_1"]] = [np.nan, np.inf, np.nan]
    epochs = (K - 1) // per_epoch + (1 if diverge_at is None else 0)
    phases = phases or [epochs]
    evaluation = pd.DataFrame({
        "epoch": np.arange(epochs + 1),
        "iteration": np.arange(epochs + 1) * per_epoch,
        "phase": np.searchsorted(np.cumsum(phases), np.arange(epochs + 1), side="right").clip(max=len(phases) - 1),
        "test_accuracy": np.clip(0.1 + 0.08 * np.arange(epochs + 1) + rng.normal(0, 0.01, epochs + 1), 0, 1)
                         if test_accuracy is None else np.asarray(test_accuracy, dtype=float),
        "test_loss": 10.0 / (1 + np.arange(epochs + 1)) + rng.uniform(0, 0.1, epochs + 1),
    })
    metrics.to_parquet(run_dir / "metrics.parquet")
    evaluation.to_parquet(run_dir / "evaluation.parquet")
    if weights:
        arrays = {}
        for l in range(d):
            arrays[f"W{l}_init"] = rng.normal(0, 0.1, (sizes[l], sizes[l + 1]))
            arrays[f"W{l}_final"] = arrays[f"W{l}_init"] + rng.normal(0, 0.1, (sizes[l], sizes[l + 1]))
            if diverge_at is not None:
                arrays[f"W{l}_final"][0, 0] = np.nan
            arrays[f"b{l + 1}_init"] = rng.normal(0, 0.1, sizes[l + 1])
            arrays[f"b{l + 1}_final"] = arrays[f"b{l + 1}_init"]
            if l >= 1:
                arrays[f"B{l}"] = rng.normal(0, 0.1, (sizes[l + 1], sizes[l]))
        np.savez(run_dir / "weights.npz", **arrays)
    spec = {"experiment": experiment, "condition": condition, "seed": seed, "sizes": list(sizes),
            "rule": rule, "activation": "tanh_relu", "targets": "one_hot", "dtype": "float64"}
    info = {"spec": spec, "seed": seed, "code_version": "test", "status": "completed", "divergence": None}
    if diverge_at is not None:
        info.update(status="diverged", divergence={"iteration": diverge_at, "reason": "non-finite loss"})
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def write_terms_tables(run_dir: Path, seed: int, *, iterations=(6, 30), max_lag=12, lags=(1, 10),
                       layers=(1, 2), num_iterations: int = 40) -> None:
    """``terms_lag``, ``terms_time`` and ``terms_similarity`` in the alignment-terms observer's columns, seeded values."""
    rng = np.random.default_rng(1000 + seed)
    lag_rows = [(k, l, o, kind) for k in iterations for l in layers for o in range(1, min(max_lag, k) + 1)
                for kind in ("nonlinear", "linear")]
    time_rows = [(k, l, o, kind) for k in range(num_iterations) for l in layers for o in lags if o <= k
                 for kind in ("nonlinear", "linear")]
    for name, rows in (("terms_lag", lag_rows), ("terms_time", time_rows)):
        table = pd.DataFrame(rows, columns=["iteration", "layer", "lag", "kind"])
        table["angle"] = 90 - 40 * (table["lag"] % 10 == 0) + rng.normal(0, 5, len(table))
        table["norm"] = rng.uniform(0, 1, len(table))
        table.to_parquet(run_dir / f"{name}.parquet")
    keys = sorted({(k, l, o) for k, l, o, _ in lag_rows + time_rows})
    similarity = pd.DataFrame([(*key, labels) for key in keys for labels in ("true", "permuted")],
                              columns=["iteration", "layer", "lag", "labels"])
    similarity["between"] = 1.0 + rng.normal(0, 0.05, len(similarity))
    similarity["within"] = similarity["between"] + np.where(similarity["labels"] == "true", 0.5, 0.0)
    similarity.to_parquet(run_dir / "terms_similarity.parquet")


def write_remainder_table(run_dir: Path, seed: int, *, iterations=(0, 6, 10, 20, 30), layers=(1, 2)) -> None:
    """``remainder.parquet`` in the remainder observer's columns, seeded values (R = 0 at k = 0)."""
    from fa_analysis.remainder import REMAINDER_COLUMNS

    rng = np.random.default_rng(3000 + seed)
    table = pd.DataFrame([(k, l) for k in iterations for l in layers], columns=["iteration", "layer"])
    for column in REMAINDER_COLUMNS:
        scale = 0.01 if column == "ratio_R_dW" else 1.0 if column.startswith("ratio") else 90.0
        table[column] = scale * (1 + rng.normal(0, 0.05, len(table)))
    first = table["iteration"] == 0
    table.loc[first, ["ratio_R_dW", "ratio_Rlin_dW"]] = 0.0
    table.loc[first, ["angle_R_Bt", "angle_Rlin_Bt", "angle_terms_Bt", "angle_linear_sum_Bt"]] = np.nan
    table.to_parquet(run_dir / "remainder.parquet")


def write_shadow_table(run_dir: Path, seed: int, *, iterations: int = 40, layers=(1, 2)) -> None:
    """``shadow.parquet`` in the shadow observer's columns, seeded values."""
    rng = np.random.default_rng(2000 + seed)
    k, l = np.meshgrid(np.arange(iterations), np.array(layers), indexing="ij")
    table = pd.DataFrame({"iteration": k.ravel(), "layer": l.ravel()})
    decay = 1 - np.exp(-table["iteration"] / 10)
    for column, drop in (("angle_W_Bt", 30), ("angle_Wlin_Bt", 40), ("angle_WBprime_Bprimet", 35),
                         ("angle_WBprime_Bt", 0), ("angle_WBprimelin_Bprimet", 40)):
        table[column] = 90 - drop * decay + rng.normal(0, 2, len(table))
    table["rel_diff_Wlin_W"] = rng.uniform(0, 0.5, len(table))
    table.to_parquet(run_dir / "shadow.parquet")
