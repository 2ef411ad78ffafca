"""A condition's label smoothing and network shape, from the config to the summary (method §1.1, §2.3).

The engine's steps are checked against plain NumPy float64 SGD written out here from the method's
equations, apart from the package: only the initial weights, the code map and the minibatch order
(tested elsewhere) are taken from it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from toy_data import projection_problem
from fa_analysis import aggregate, data
from fa_analysis.config import ConfigError, run_specs, validate
from fa_analysis.spec import RunSpec
from fa_analysis.train import ORDER_SEED_OFFSET, train_run

N_IN = 16  # data.image_size 4


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic():
    """A learnable toy problem: 16 inputs, class = argmax of a fixed random projection."""
    return projection_problem(300, seed=7, n_in=N_IN)


def _raw(conditions, trajectory=None):
    """A small config (unvalidated) whose main experiment trains ``conditions`` (name: fields), one
    seed; the mechanism analyses take a plain ``fa`` condition (added if missing)."""
    first = next(iter(conditions))
    return {
        "data": {"image_size": 4, "train_subset": 240},
        "network": {"sizes": [N_IN, 12, 9, 50]},
        "training": {"batch_size": 40, "epochs": 2, "snapshot_every": 1, "dtype": "float64"},
        "conditions": {"fa": {"rule": "fa", "eta": 2.0e-3}, **conditions},
        "embedding": {"landscape_train_subset": 100},
        "experiments": {"main": {"conditions": list(conditions), "seeds": [0]},
                        "label_noise": {"conditions": [first], "levels": [0], "seeds": [0]},
                        "label_change": {"conditions": [first], "seeds": [0]},
                        "trajectory": {"conditions": trajectory or [first]}},
        "alignment_terms": {"condition": "fa", "epochs": 2, "iterations": [6], "max_lag": 3,
                            "lags_over_time": [1], "seeds": [0]},
        "remainder": {"condition": "fa", "epochs": 2, "iterations": [3], "seeds": [0]},
        "shadow": {"condition": "fa", "epochs": 1, "seeds": [0]},
    }


def _config(**conditions):
    return validate(_raw(conditions))


def _main_spec(config, name):
    return RunSpec.from_dict({**run_specs(config)[("main", name, 0)], "threads": 1})


# --------------------------------------------------------------------------------------------
# The reference: NumPy float64, written out from method §1-§3


def _f(Z):
    return np.tanh(np.maximum(Z, 0.0))


def _fprime(Z):
    return (Z > 0) * (1.0 - np.tanh(Z) ** 2)


def _forward(W, b, X):
    Z, L = [None], [X]
    for W_l, b_l in zip(W, b):
        Z.append(L[-1] @ W_l + b_l)
        L.append(_f(Z[-1]))
    return Z, L


def numpy_training(spec, run_dir, dataset):
    """Thetas before every step and after the last, the loss of every step, and the evaluation rows.

    Targets ``Y* = code (1 - s) + s`` (method §2.3); ``E = Y* - L_d``; BP's or FA's deltas; the
    plain step ``W += eta L^T delta``, ``b += eta 1^T delta``; WN after every step (method §3).
    """
    with np.load(run_dir / "weights.npz") as weights:
        d = len(spec.sizes) - 1
        W = [weights[f"W{l}_init"].astype(np.float64) for l in range(d)]
        b = [weights[f"b{l}_init"].astype(np.float64) for l in range(1, d + 1)]
        B = [None] + [weights[f"B{l}"].astype(np.float64) for l in range(1, d)]
    codes = data.phase_codes(spec.targets, spec.seed, 0).double().numpy()
    s = spec.label_smoothing
    targets = codes * (1 - s) + s
    X, y = dataset.X_train.double().numpy(), dataset.y_train.numpy()
    X_test, y_test = dataset.X_test.double().numpy(), dataset.y_test.numpy()

    def evaluate():
        _, L = _forward(W, b, X_test)
        accuracy = np.mean(np.argmax(L[d] @ codes.T, axis=1) == y_test)
        return accuracy, 0.5 * np.sum((targets[y_test] - L[d]) ** 2) / len(y_test)

    thetas, losses, evaluations = [], [], []
    for epoch in range(spec.epochs):
        evaluations.append(evaluate())
        order = data.batch_order(len(X), spec.batch_size, epoch, spec.reshuffle, spec.seed + ORDER_SEED_OFFSET)
        for idx in order.numpy().reshape(-1, spec.batch_size):
            thetas.append(np.concatenate([w.ravel() for w in W] + b))
            Z, L = _forward(W, b, X[idx])
            E = targets[y[idx]] - L[d]
            losses.append(0.5 * np.sum(E ** 2))
            delta = [None] * (d + 1)
            delta[d] = E * _fprime(Z[d])
            for l in range(d - 1, 0, -1):
                back = W[l].T if spec.rule == "bp" else B[l]
                delta[l] = (delta[l + 1] @ back) * _fprime(Z[l])
            for l in range(d):
                W[l] = W[l] + spec.eta * L[l].T @ delta[l + 1]
                b[l] = b[l] + spec.eta * delta[l + 1].sum(axis=0)
                if spec.wn:
                    W[l] = spec.gamma * W[l] / np.linalg.norm(W[l], axis=0)
    evaluations.append(evaluate())
    thetas.append(np.concatenate([w.ravel() for w in W] + b))
    return np.stack(thetas), np.array(losses), np.array(evaluations), W


@pytest.mark.parametrize("name,condition,sizes", [
    ("fa_smooth", {"rule": "fa", "eta": 2.0e-3, "label_smoothing": 0.05}, [N_IN, 12, 9, 50]),
    ("bp_deep_wide", {"rule": "bp", "eta": 1.0e-3, "wn": True, "gamma": 0.8, "hidden": [20, 20, 20, 20, 20]},
     [N_IN, 20, 20, 20, 20, 20, 50]),
    ("fa_shallow_smooth", {"rule": "fa", "eta": 2.0e-3, "hidden": [30], "label_smoothing": 0.3}, [N_IN, 30, 50]),
])
def test_engine_steps_equal_a_numpy_float64_reference(synthetic, tmp_path, name, condition, sizes):
    """Label smoothing and the condition's own widths and depth, from the config through the engine."""
    spec = _main_spec(_config(**{name: condition}), name)
    assert list(spec.sizes) == sizes
    result = train_run(spec, synthetic, tmp_path / "run", log=lambda line: None)
    thetas, losses, evaluations, W_final = numpy_training(spec, tmp_path / "run", synthetic)

    metrics = pd.read_parquet(result.files["metrics"])
    np.testing.assert_allclose(metrics["loss"].to_numpy(), losses, rtol=1e-10)
    snapshots = np.load(result.files["snapshots"])
    np.testing.assert_allclose(snapshots["theta"], thetas.astype(np.float32), rtol=1e-5, atol=1e-6)
    with np.load(result.files["weights"]) as weights:
        for l, W_l in enumerate(W_final):
            np.testing.assert_allclose(weights[f"W{l}_final"], W_l, rtol=1e-9, atol=1e-12)
    evaluation = pd.read_parquet(result.files["evaluation"])
    np.testing.assert_allclose(evaluation["test_accuracy"].to_numpy(), evaluations[:, 0])
    np.testing.assert_allclose(evaluation["test_loss"].to_numpy(), evaluations[:, 1], rtol=1e-10)
    d = len(sizes) - 1
    assert [c for c in metrics.columns if c.startswith("angle_W_Bt_")] == (
        ["angle_W_Bt_all"] + [f"angle_W_Bt_{l}" for l in range(1, d)])
    assert [c for c in metrics.columns if c.startswith("norm_delta_")] == [f"norm_delta_{l}" for l in range(1, d + 1)]


def test_smoothing_changes_the_targets_and_the_loss_but_not_the_prediction():
    """y (1 - s) + s: each 0 of a five-hot code becomes s, each 1 stays 1. The offset s is the same for
    every class, <o, (1 - s) c + s 1> = (1 - s) <o, c> + s sum(o), so the class maximising it is the same."""
    codes = data.phase_codes("five_hot", 3, 0).double()
    smoothed = data.smooth_targets(codes, 0.05)
    assert set(smoothed[codes == 0].tolist()) == {0.05} and set(smoothed[codes == 1].tolist()) == {1.0}
    assert data.smooth_targets(codes, 0.0) is codes
    outputs = torch.rand(2000, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (0.05, 0.5, 0.9):
        assert torch.equal(data.decode(outputs, codes), data.decode(outputs, data.smooth_targets(codes, s)))


def test_a_condition_with_smoothing_gets_its_own_runs_and_bad_values_name_the_key():
    config = _config(fa={"rule": "fa", "eta": 2.0e-3}, fa_smooth={"rule": "fa", "eta": 2.0e-3, "label_smoothing": 0.05})
    specs = run_specs(config)
    plain, smooth = specs[("main", "fa", 0)], specs[("main", "fa_smooth", 0)]
    assert (plain["label_smoothing"], smooth["label_smoothing"]) == (0.0, 0.05)
    assert {k: v for k, v in plain.items() if k not in ("condition", "label_smoothing")} == \
           {k: v for k, v in smooth.items() if k not in ("condition", "label_smoothing")}
    for bad in (1, 1.5, -0.1, "0.1x"):
        with pytest.raises(ConfigError, match="conditions.fa.label_smoothing"):
            _config(fa={"rule": "fa", "eta": 2.0e-3, "label_smoothing": bad})
    with pytest.raises(ValueError, match="label_smoothing must be a number in"):
        RunSpec(label_smoothing=1.0)


def test_a_conditions_hidden_widths_set_its_sizes_and_the_trajectories_must_share_them():
    config = _config(fa={"rule": "fa", "eta": 2.0e-3}, fa_deep={"rule": "fa", "eta": 2.0e-3, "hidden": [7, 7, 7]})
    specs = run_specs(config)
    assert specs[("main", "fa", 0)]["sizes"] == [N_IN, 12, 9, 50]
    assert specs[("main", "fa_deep", 0)]["sizes"] == [N_IN, 7, 7, 7, 50]
    with pytest.raises(ConfigError, match="conditions.fa.hidden"):
        _config(fa={"rule": "fa", "eta": 2.0e-3, "hidden": [0]})
    mixed = {"fa": {"rule": "fa", "eta": 2.0e-3}, "bp_deep": {"rule": "bp", "eta": 2.0e-3, "hidden": [7, 7, 7]}}
    with pytest.raises(ConfigError, match="experiments.trajectory.conditions' mixes network shapes"):
        validate(_raw(mixed, trajectory=["fa", "bp_deep"]))
    smoothed = {"fa": {"rule": "fa", "eta": 2.0e-3}, "bp": {"rule": "bp", "eta": 2.0e-3, "label_smoothing": 0.1}}
    with pytest.raises(ConfigError, match="mixes label_smoothing"):
        validate(_raw(smoothed, trajectory=["fa", "bp"]))



def test_conditions_of_different_depths_run_through_training_aggregation_and_summary(synthetic, tmp_path):
    """Each condition's per-layer measures have its own layers; the summary holds every layer of any."""
    config = _config(fa={"rule": "fa", "eta": 2.0e-3},
                     fa_deep={"rule": "fa", "eta": 2.0e-3, "hidden": [8, 8, 8, 8], "label_smoothing": 0.05})
    aggregated = {}
    for name, depth in (("fa", 3), ("fa_deep", 5)):
        runs = []
        for seed in (0, 1):
            spec = RunSpec.from_dict({**run_specs(config)[("main", name, 0)], "seed": seed, "threads": 1})
            runs.append(tmp_path / "runs" / name / f"seed{seed}")
            train_run(spec, synthetic, runs[-1], log=lambda line: None)
        aggregated[name] = tmp_path / "aggregated" / name
        aggregate.aggregate_condition(runs, aggregated[name])
        measures = set(pd.read_parquet(aggregated[name] / "metrics.parquet")["measure"])
        assert {f"angle_W_Bt_{l}" for l in range(1, depth)} <= measures and f"angle_W_Bt_{depth}" not in measures
        assert {f"norm_W_{l}" for l in range(depth)} <= measures
        settings = json.loads((aggregated[name] / "aggregate.json").read_text())["settings"]
        assert settings["sizes"] == run_specs(config)[("main", name, 0)]["sizes"]
    table = aggregate.summary_table(aggregated.values(), tmp_path / "summary.csv", tmp_path / "summary.md")
    rows = table.set_index("condition")
    assert [c for c in table.columns if c.startswith("angle_W_Bt_") and c.endswith("_mean")] == (
        [f"angle_W_Bt_{l}_mean" for l in range(1, 5)] + ["angle_W_Bt_all_mean"])
    assert np.isnan(rows.loc["fa", "angle_W_Bt_4_mean"]) and np.isfinite(rows.loc["fa_deep", "angle_W_Bt_4_mean"])
    runs_csv = pd.read_csv(aggregated["fa_deep"] / "runs.csv")
    assert rows.loc["fa_deep", "angle_W_Bt_4_mean"] == pytest.approx(runs_csv["angle_W_Bt_4"].mean())
    assert (rows["n_completed"] + rows["n_collapsed"] + rows["n_diverged"]).tolist() == [2, 2]
