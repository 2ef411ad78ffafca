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
              rule: str = "fa", weights: bool = True) -> Path:
    """One run directory with metrics, evaluation, weights and run.json; values seeded by ``seed``.

    ``diverge_at`` = k: the metrics stop at k with a NaN loss row there and the status is diverged.
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
        "test_accuracy": np.clip(0.1 + 0.08 * np.arange(epochs + 1) + rng.normal(0, 0.01, epochs + 1), 0, 1),
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
