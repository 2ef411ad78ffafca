"""Aggregation over seeds, divergence bookkeeping and the summary table (method §5 and §9)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fa_analysis import aggregate, outcome
from results_synthetic import SIZES, write_run


def _angle(A, C):
    cos = np.sum(A * C) / (np.linalg.norm(A) * np.linalg.norm(C))
    return np.degrees(np.arccos(cos))


@pytest.fixture
def condition(tmp_path):
    """Three seeds of main/fa, seed 2 diverging at iteration 25 of 40."""
    runs = [write_run(tmp_path, "main", "fa", seed) for seed in (0, 1)]
    runs.append(write_run(tmp_path, "main", "fa", 2, diverge_at=25))
    out = tmp_path / "aggregated" / "main" / "fa"
    written = aggregate.aggregate_condition(runs, out)
    return runs, out, written


def test_mean_sd_and_n_match_numpy_over_seeds(condition):
    runs, out, _ = condition
    table = pd.read_parquet(out / "metrics.parquet")
    raw = [pd.read_parquet(r / "metrics.parquet").set_index("iteration") for r in runs]
    for k in (0, 10, 24):  # every seed finite here
        values = np.array([m.loc[k, "angle_W_Bt_2"] for m in raw])
        row = table[(table.iteration == k) & (table.measure == "angle_W_Bt_2")].iloc[0]
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert row["sd"] == pytest.approx(values.std(ddof=1), rel=1e-12)


def test_diverged_run_counts_until_it_diverged(condition):
    runs, out, _ = condition
    table = pd.read_parquet(out / "metrics.parquet")
    loss = table[table.measure == "loss"].set_index("iteration")
    assert loss.loc[24, "n"] == 3
    assert loss.loc[25, "n"] == 2  # the NaN row of the diverged run is left out
    assert loss.loc[39, "n"] == 2
    inf_row = table[(table.measure == "angle_W_Bt_all") & (table.iteration == 25)].iloc[0]
    assert inf_row["n"] == 2 and np.isfinite(inf_row["mean"])
    # a measure still finite at the divergence row keeps all three runs there
    finite_row = table[(table.measure == "angle_W_Bt_2") & (table.iteration == 25)].iloc[0]
    assert finite_row["n"] == 3
    assert np.isfinite(table[["mean"]].to_numpy()).all()


def test_runs_csv_lists_every_run_with_status_and_divergence(condition):
    runs, out, _ = condition
    listed = pd.read_csv(out / "runs.csv").set_index("seed")
    assert list(listed.index) == [0, 1, 2]
    assert list(listed["status"]) == ["completed", "completed", "diverged"]
    assert listed.loc[2, "divergence_iteration"] == 25
    assert listed.loc[2, "divergence_reason"] == "non-finite loss"
    assert np.isnan(listed.loc[0, "divergence_iteration"])
    # the diverged run's final weights hold NaN: its angles come from its last finite metrics row
    assert listed.loc[2, "angles_from"] == "metrics@24" and np.isfinite(listed.loc[2, "angle_W_Bt_1"])
    assert listed.loc[0, "angles_from"] == "weights"
    # final test accuracy = the last evaluation of each run
    evaluation = pd.read_parquet(runs[0] / "evaluation.parquet")
    assert listed.loc[0, "final_test_accuracy"] == pytest.approx(evaluation["test_accuracy"].iloc[-1])


def test_a_diverged_run_has_no_final_accuracy_but_its_last_finite_evaluation(condition):
    """A diverged run never finished: its final values are empty, its last finite evaluation is kept."""
    runs, out, _ = condition
    listed = pd.read_csv(out / "runs.csv").set_index("seed")
    diverged = pd.read_parquet(runs[2] / "evaluation.parquet")
    assert listed.loc[2, ["final_epoch", "final_test_accuracy", "final_test_loss"]].isna().all()
    assert listed.loc[2, "last_finite_epoch"] == diverged["epoch"].iloc[-1] == 2
    assert listed.loc[2, "last_finite_test_accuracy"] == pytest.approx(diverged["test_accuracy"].iloc[-1])
    assert listed.loc[2, "last_finite_test_loss"] == pytest.approx(diverged["test_loss"].iloc[-1])
    completed = pd.read_parquet(runs[0] / "evaluation.parquet")
    assert listed.loc[0, "final_epoch"] == listed.loc[0, "last_finite_epoch"] == completed["epoch"].iloc[-1]
    assert listed.loc[0, "final_test_accuracy"] == listed.loc[0, "last_finite_test_accuracy"]


def test_a_diverged_runs_angles_come_from_before_it_diverged(tmp_path):
    """Even where its final weights are finite, they come after the step that blew up."""
    run_dir = write_run(tmp_path, "main", "fa", 0, diverge_at=12)
    with np.load(run_dir / "weights.npz") as weights:
        finite = {name: np.nan_to_num(weights[name]) for name in weights.files}
    np.savez(run_dir / "weights.npz", **finite)
    angles, source = aggregate.final_angles(aggregate.read_run(run_dir))
    assert source == "metrics@11"


def test_final_angles_are_those_of_the_final_weights(condition):
    runs, out, _ = condition
    listed = pd.read_csv(out / "runs.csv").set_index("seed")
    with np.load(runs[1] / "weights.npz") as w:
        for l in range(1, len(SIZES) - 1):
            expected = _angle(w[f"W{l}_final"], w[f"B{l}"].T)
            assert listed.loc[1, f"angle_W_Bt_{l}"] == pytest.approx(expected, rel=1e-9)
        all_W = np.concatenate([w[f"W{l}_final"].ravel() for l in (1, 2)])
        all_Bt = np.concatenate([w[f"B{l}"].T.ravel() for l in (1, 2)])
    assert listed.loc[1, "angle_W_Bt_all"] == pytest.approx(_angle(all_W, all_Bt), rel=1e-9)


def test_final_angles_fall_back_to_the_last_finite_metrics_row(tmp_path):
    run_dir = write_run(tmp_path, "main", "fa", 0, weights=False, diverge_at=12)
    run = aggregate.read_run(run_dir)
    metrics = run.metrics
    angles, source = aggregate.final_angles(run)
    assert angles["angle_W_Bt_2"] == pytest.approx(metrics["angle_W_Bt_2"].iloc[11])  # row 12 has NaN/inf
    assert source == "metrics@11"


def test_evaluation_is_aggregated_per_epoch(condition):
    runs, out, _ = condition
    table = pd.read_parquet(out / "evaluation.parquet")
    accuracy = table[table.measure == "test_accuracy"].set_index("epoch")
    first = [pd.read_parquet(r / "evaluation.parquet").set_index("epoch").loc[0, "test_accuracy"] for r in runs]
    assert accuracy.loc[0, "mean"] == pytest.approx(np.mean(first))
    assert accuracy.loc[0, "n"] == 3
    assert accuracy.loc[4, "n"] == 2  # the diverged run has no evaluation after epoch 2


def test_observer_tables_are_aggregated_by_their_keys(tmp_path):
    rng = np.random.default_rng(0)
    runs, angles = [], []
    for seed in range(3):
        run_dir = write_run(tmp_path, "terms", "fa_fixed", seed)
        table = pd.DataFrame([(k, layer, lag, kind) for k in (66, 1260) for layer in (1, 2)
                              for lag in range(1, 5) for kind in ("nonlinear", "linear")],
                             columns=["k", "layer", "lag", "kind"])
        table["angle"] = rng.uniform(0, 180, len(table))
        table["seed"] = seed
        table.to_parquet(run_dir / "terms_lag.parquet")
        runs.append(run_dir)
        angles.append(table)
    written = aggregate.aggregate_condition(runs, tmp_path / "agg")
    out = pd.read_parquet(written["terms_lag"])
    assert len(out) == len(angles[0])  # one row per (k, layer, lag, kind); seed averaged over
    assert set(out.columns) == {"k", "layer", "lag", "kind", "measure", "mean", "sd", "n"}
    row = out[(out.k == 1260) & (out.layer == 2) & (out.lag == 3) & (out.kind == "linear")].iloc[0]
    expected = [t[(t.k == 1260) & (t.layer == 2) & (t.lag == 3) & (t.kind == "linear")]["angle"].item()
                for t in angles]
    assert row["mean"] == pytest.approx(np.mean(expected))
    assert row["sd"] == pytest.approx(np.std(expected, ddof=1))


def test_open_loop_aggregates_over_repetitions(tmp_path):
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"repetition": np.repeat(np.arange(4), 5), "iteration": np.tile(np.arange(5), 4),
                          "angle": rng.uniform(0, 180, 20)})
    out = aggregate.open_loop_curve(table, keys=["iteration"])
    at_3 = table[table.iteration == 3]["angle"]
    row = out[out.iteration == 3].iloc[0]
    assert (row["mean"], row["n"]) == (pytest.approx(at_3.mean()), 4)
    assert row["sd"] == pytest.approx(at_3.std(ddof=1))
    assert list(out.columns) == ["iteration", "mean", "sd", "n"]


def test_summary_has_one_row_per_condition_with_finite_values(tmp_path, condition):
    _, fa_dir, _ = condition
    bp_runs = [write_run(tmp_path, "main", "bp", seed, rule="bp") for seed in (0, 1)]
    bp_dir = tmp_path / "aggregated" / "main" / "bp"
    aggregate.aggregate_condition(bp_runs, bp_dir)
    table = aggregate.summary_table([fa_dir, bp_dir], tmp_path / "summary.csv", tmp_path / "summary.md")
    assert list(table["condition"]) == ["fa", "bp"]
    fa = table.set_index("condition").loc["fa"]
    assert (fa["n_seeds"], fa["n_completed"], fa["n_diverged"]) == (3, 2, 1)
    numeric = table.filter(regex="_(mean|sd)$")
    assert np.isfinite(numeric.to_numpy()).all()
    runs = pd.read_csv(fa_dir / "runs.csv")
    completed = runs[runs.status == "completed"]["final_test_accuracy"]
    assert fa["final_test_accuracy_mean"] == pytest.approx(completed.mean())
    assert fa["final_test_accuracy_sd"] == pytest.approx(completed.std(ddof=1))
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 2
    markdown = (tmp_path / "summary.md").read_text()
    assert f"{100 * completed.mean():.1f} ± {100 * completed.std(ddof=1):.1f}" in markdown
    assert "| main | fa | 3 | 1 | 0 |" in markdown


def test_aggregate_json_records_runs_and_divergence(condition):
    runs, out, written = condition
    meta = json.loads(written["aggregate"].read_text())
    assert meta["seeds"] == [0, 1, 2] and meta["n_diverged"] == 1
    assert meta["code_version"]


def test_missing_run_json_names_the_directory(tmp_path):
    run_dir = write_run(tmp_path, "main", "fa", 0)
    (run_dir / "run.json").unlink()
    with pytest.raises(FileNotFoundError, match="run.json"):
        aggregate.aggregate_condition([run_dir], tmp_path / "agg")


def test_runs_of_different_conditions_are_refused(tmp_path):
    runs = [write_run(tmp_path, "main", "fa", 0), write_run(tmp_path, "main", "bp", 0, rule="bp")]
    with pytest.raises(ValueError, match="several conditions"):
        aggregate.aggregate_condition(runs, tmp_path / "agg")


# ---------------------------------------------------------------------------------------------
# Collapse: a run that finished far below its own best (method §5.6)


def _evaluation(accuracy, phase=None):
    """An evaluation table with these accuracies, one row per epoch (phase 0 unless given)."""
    accuracy = np.asarray(accuracy, dtype=float)
    epoch = np.arange(len(accuracy))
    return pd.DataFrame({"epoch": epoch, "iteration": 10 * epoch,
                         "phase": np.zeros(len(accuracy), int) if phase is None else np.asarray(phase),
                         "test_accuracy": accuracy, "test_loss": 1.0 - accuracy})


#: Rises to 0.959 at epoch 2, then falls to chance: the shape of a run that collapsed.
COLLAPSING = [0.1, 0.8, 0.959, 0.9, 0.5, 0.097]


@pytest.fixture
def with_collapse(tmp_path):
    """main/bp_wn: seeds 0 and 1 healthy, seed 2 collapsing, seed 3 diverging."""
    runs = [write_run(tmp_path, "main", "bp_wn", seed, rule="bp") for seed in (0, 1)]
    runs.append(write_run(tmp_path, "main", "bp_wn", 2, rule="bp", iterations=50, test_accuracy=COLLAPSING))
    runs.append(write_run(tmp_path, "main", "bp_wn", 3, rule="bp", diverge_at=25))
    out = tmp_path / "aggregated" / "main" / "bp_wn"
    written = aggregate.aggregate_condition(runs, out)
    return runs, out, written


def test_a_run_that_lost_its_accuracy_is_collapsed_and_a_healthy_one_is_not(with_collapse):
    runs, out, written = with_collapse
    listed = pd.read_csv(out / "runs.csv").set_index("seed")
    assert list(listed["status"]) == ["completed", "completed", "collapsed", "diverged"]
    assert listed.loc[2, "best_test_accuracy"] == pytest.approx(0.959)
    assert listed.loc[2, "best_epoch"] == 2
    assert listed.loc[2, "final_test_accuracy"] == pytest.approx(0.097)
    assert listed.loc[2, "accuracy_drop"] == pytest.approx(0.959 - 0.097)
    for seed in (0, 1):  # a healthy run: best and drop from its own evaluation table
        accuracy = pd.read_parquet(runs[seed] / "evaluation.parquet")["test_accuracy"]
        assert listed.loc[seed, "best_test_accuracy"] == pytest.approx(accuracy.max())
        assert listed.loc[seed, "best_epoch"] == accuracy.idxmax()
        assert listed.loc[seed, "accuracy_drop"] == pytest.approx(accuracy.max() - accuracy.iloc[-1])
    # a diverged run stays diverged; its best evaluation is still recorded
    diverged = pd.read_parquet(runs[3] / "evaluation.parquet")["test_accuracy"]
    assert listed.loc[3, "best_test_accuracy"] == pytest.approx(diverged.max())
    assert np.isnan(listed.loc[3, "accuracy_drop"])
    meta = json.loads(written["aggregate"].read_text())
    assert (meta["n_diverged"], meta["n_collapsed"], meta["collapse_margin"]) == (1, 1, 0.1)


def test_the_summary_counts_collapsed_and_diverged_runs_apart_and_averages_neither(tmp_path, with_collapse):
    _, out, _ = with_collapse
    table = aggregate.summary_table([out], tmp_path / "summary.csv", tmp_path / "summary.md")
    row = table.iloc[0]
    assert (row["n_seeds"], row["n_completed"], row["n_diverged"], row["n_collapsed"]) == (4, 2, 1, 1)
    runs = pd.read_csv(out / "runs.csv")
    healthy = runs[runs.seed.isin([0, 1])]
    assert row["final_test_accuracy_mean"] == pytest.approx(healthy["final_test_accuracy"].mean())
    assert row["angle_W_Bt_1_mean"] == pytest.approx(healthy["angle_W_Bt_1"].mean())
    assert "| main | bp_wn | 4 | 1 | 1 |" in (tmp_path / "summary.md").read_text()


def test_the_collapse_margin_is_respected_at_its_boundary():
    """A fall of exactly the margin is no collapse (the accuracies' rounding aside); one test image more is."""
    margin = 0.1
    at_margin = _evaluation([0.1, 0.8, 0.7])  # 0.8 - 0.7 is 0.10000000000000009 in floating point
    beyond = _evaluation([0.1, 0.8, 0.7 - 1e-4])  # one image of 10,000 below
    assert outcome.run_status("completed", at_margin, margin) == "completed"
    assert outcome.run_status("completed", beyond, margin) == "collapsed"
    assert outcome.run_status("completed", beyond, 0.2) == "completed"  # a wider margin
    assert outcome.run_status("completed", _evaluation([0.1, 0.5, 0.5]), 0.0) == "completed"  # ends at its best
    assert outcome.run_status("completed", _evaluation(COLLAPSING), 1.0) == "completed"  # 1 turns it off
    assert outcome.run_status("diverged", _evaluation(COLLAPSING), margin) == "diverged"


def test_the_margin_reaches_runs_csv(tmp_path):
    run = write_run(tmp_path, "main", "fa", 0, iterations=50, test_accuracy=COLLAPSING)
    for margin, status in ((0.1, "collapsed"), (0.9, "completed")):
        out = tmp_path / f"agg{margin}"
        aggregate.aggregate_condition([run], out, collapse_margin=margin)
        assert pd.read_csv(out / "runs.csv")["status"].item() == status
    with pytest.raises(ValueError, match="analysis.collapse_margin"):
        aggregate.aggregate_condition([run], tmp_path / "bad", collapse_margin=1.5)


def test_a_fall_at_a_label_change_is_no_collapse_but_a_collapse_before_it_is():
    """Each phase is judged on its own: the remap's fall is expected (method §4.4), a phase that ends
    far below its own best is a collapse even when the run then stays at chance."""
    # at the boundary (epoch 2) the table holds the old phase's end and the new phase's start
    phase = [0, 0, 0, 1, 1, 1]
    relearned = _evaluation([0.1, 0.9, 0.92, 0.1, 0.8, 0.88], phase)
    collapsed_first = _evaluation([0.1, 0.9, 0.1, 0.1, 0.1, 0.1], phase)
    assert outcome.accuracy_drop(relearned) == pytest.approx(0.0)
    assert outcome.run_status("completed", relearned, 0.1) == "completed"
    assert outcome.accuracy_drop(collapsed_first) == pytest.approx(0.8)
    assert outcome.run_status("completed", collapsed_first, 0.1) == "collapsed"
    assert outcome.best_evaluation(relearned) == (pytest.approx(0.92), 2)


def test_summary_of_conditions_with_different_depths_has_every_layer(tmp_path, condition):
    """A deeper condition adds its layers' columns; the shallower one has none there (– in Markdown)."""
    _, shallow_dir, _ = condition
    deep_sizes = [6, 5, 4, 5, 10]  # d = 4: layers 1..3
    deep = [write_run(tmp_path, "main", "fa_deep", seed, sizes=deep_sizes) for seed in (0, 1)]
    deep_dir = tmp_path / "aggregated" / "main" / "fa_deep"
    aggregate.aggregate_condition(deep, deep_dir)
    table = aggregate.summary_table([shallow_dir, deep_dir], tmp_path / "summary.csv", tmp_path / "summary.md")
    angle_means = [c for c in table.columns if c.startswith("angle_W_Bt_") and c.endswith("_mean")]
    assert angle_means == ["angle_W_Bt_1_mean", "angle_W_Bt_2_mean", "angle_W_Bt_3_mean", "angle_W_Bt_all_mean"]
    rows = table.set_index("condition")
    assert np.isnan(rows.loc["fa", "angle_W_Bt_3_mean"])
    with np.load(deep[0] / "weights.npz") as w0, np.load(deep[1] / "weights.npz") as w1:
        expected = [_angle(w["W3_final"], w["B3"].T) for w in (w0, w1)]
    assert rows.loc["fa_deep", "angle_W_Bt_3_mean"] == pytest.approx(np.mean(expected))
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert "∠(W_3, B_3ᵀ) (°)" in lines[0]
    assert lines[2].split(" | ")[-2] == "–"  # fa has no layer 3
