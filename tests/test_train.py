"""The training loop, its metrics, evaluation, snapshots, divergence and artifacts (method §5)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from toy_data import projection_problem
from fa_analysis import artifacts, data
from fa_analysis.engine import StepState
from fa_analysis.measures import angle_deg, angle_deg_concat
from fa_analysis.network import (
    backward_deltas,
    derivatives,
    forward,
    init_network,
    output_error,
    sgd_step_,
    weight_updates,
)
from fa_analysis.normalization import normalize_columns_, unit_columns_
from fa_analysis.spec import RunSpec
from fa_analysis.train import ORDER_SEED_OFFSET, train_run

SMALL = dict(sizes=[16, 12, 9, 11, 50], batch_size=40, epochs=3, snapshot_every=2, threads=1)
SQUARE = [16, 12, 12, 12, 50]  # equal hidden layers: the engine batches their products


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic():
    """A learnable toy problem: 16 inputs, class = argmax of a fixed random projection."""
    return projection_problem(400, seed=123, metadata={"toy": True})


def _spec(**changes):
    return RunSpec(**{**SMALL, "dtype": "float64", **changes})


def _quiet(_line):
    pass


class Recorder:
    """An observer keeping copies of the state it is shown."""

    def __init__(self):
        self.steps = []

    def start(self, net, spec, num_iterations, device):
        self.num_iterations = num_iterations
        self.B = [None] + [B.clone() for B in net.B[1:]]

    def step(self, k, net, state):
        assert isinstance(state, StepState)
        self.steps.append(
            {
                "k": k,
                "W": [w.clone() for w in net.W],
                "b": [b.clone() for b in net.b],
                "dW": [w.clone() for w in state.dW],
                "db": [b.clone() for b in state.db],
                "X": state.X.clone(),
                "Y": state.Y.clone(),
                "labels": state.labels.clone(),
                "batch_index": state.batch_index.clone(),
                "eta": state.eta,
            }
        )

    def finish(self):
        return {"recorder": pd.DataFrame({"k": [s["k"] for s in self.steps]})}


# --------------------------------------------------------------------------------------------
# The loop computes what docs/method.md says
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule,wn,ibn,sizes",
    [
        ("fa", False, False, SMALL["sizes"]),
        ("bp", True, False, SMALL["sizes"]),
        ("fa", True, True, SMALL["sizes"]),
        ("dfa", False, False, SMALL["sizes"]),
        ("fa", True, True, SQUARE),
        ("bp", False, False, SQUARE),
        ("dfa", True, False, SQUARE),
    ],
)
def test_loop_matches_a_plain_reference_implementation(synthetic, tmp_path, rule, wn, ibn, sizes):
    """Same seed, batches and codes: the flat-buffer loop reproduces the textbook loop, step by step."""
    spec = _spec(rule=rule, wn=wn, gamma=0.8 if wn else None, ibn=ibn, eta=2e-3, snapshot_every=1, sizes=sizes)
    result = train_run(spec, synthetic, tmp_path / "run", log=_quiet)
    snapshots = np.load(result.files["snapshots"])

    net = init_network(spec.sizes, spec.init_std, seed=spec.seed, dtype=torch.float64)
    if wn:
        normalize_columns_(net.W, spec.gamma)
    if ibn:
        unit_columns_(net.B)
    codes = data.phase_codes(spec.targets, spec.seed, 0).double()
    X, y = synthetic.X_train.double(), synthetic.y_train
    thetas = []
    for epoch in range(spec.epochs):
        order = data.batch_order(len(X), spec.batch_size, epoch, spec.reshuffle, spec.seed + ORDER_SEED_OFFSET)
        for idx in order.view(-1, spec.batch_size):
            thetas.append(torch.cat([w.reshape(-1) for w in net.W] + list(net.b)).float())
            Z, L = forward(net, X[idx])
            E = output_error(codes[y[idx]], L[-1])
            dW, db = weight_updates(net, L, backward_deltas(net, Z, L, E, rule))
            sgd_step_(net, dW, db, spec.eta)
            if wn:
                normalize_columns_(net.W, spec.gamma)
    thetas.append(torch.cat([w.reshape(-1) for w in net.W] + list(net.b)).float())
    assert snapshots["iterations"].tolist() == list(range(len(thetas)))
    np.testing.assert_allclose(snapshots["theta"], torch.stack(thetas).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule,sizes", [("fa", SMALL["sizes"]), ("fa", SQUARE), ("bp", SQUARE), ("dfa", SQUARE)])
def test_metrics_are_the_angles_and_norms_of_the_state_before_each_step(synthetic, tmp_path, rule, sizes):
    """Whichever rule drives, the FA-vs-BP angle compares both rules' updates on the same batch and state."""
    spec = _spec(rule=rule, eta=2e-3, sizes=sizes)
    recorder = Recorder()
    result = train_run(spec, synthetic, tmp_path / "run", observers=[recorder], log=_quiet)
    metrics = pd.read_parquet(result.files["metrics"])
    d = len(spec.sizes) - 1
    assert len(metrics) == len(recorder.steps) == recorder.num_iterations == 3 * (320 // 40)
    B = recorder.B
    W_first = recorder.steps[0]["W"]
    codes = data.phase_codes(spec.targets, spec.seed, 0).double()
    for step in recorder.steps[::5]:
        row = metrics.iloc[step["k"]]
        W = step["W"]
        net = init_network(spec.sizes, spec.init_std, seed=spec.seed, dtype=torch.float64)
        net.W, net.b, net.B = W, step["b"], B
        Z, L = forward(net, step["X"])
        E = output_error(codes[step["labels"]], L[-1])
        torch.testing.assert_close(step["Y"], codes[step["labels"]])
        assert row["loss"] == pytest.approx(0.5 * (E**2).sum().item(), rel=1e-10)
        delta_drive = backward_deltas(net, Z, L, E, rule)
        dW_fa, _ = weight_updates(net, L, backward_deltas(net, Z, L, E, "fa"))
        dW_bp, _ = weight_updates(net, L, backward_deltas(net, Z, L, E, "bp"))
        for l in range(d):
            torch.testing.assert_close(step["dW"][l], weight_updates(net, L, delta_drive)[0][l])
            assert row[f"angle_dWfa_dWbp_{l}"] == pytest.approx(angle_deg(dW_fa[l], dW_bp[l]).item(), abs=1e-5)
            dW_rule = weight_updates(net, L, delta_drive)[0][l]
            assert row[f"angle_dWrule_dWbp_{l}"] == pytest.approx(angle_deg(dW_rule, dW_bp[l]).item(), abs=1e-5)
            assert row[f"angle_dW_W_{l}"] == pytest.approx(angle_deg(step["dW"][l], W[l]).item(), abs=1e-6)
            assert row[f"norm_W_{l}"] == pytest.approx(W[l].norm().item(), rel=1e-10)
            assert row[f"norm_W_rel_{l}"] == pytest.approx((W[l].norm() / W_first[l].norm()).item(), rel=1e-10)
            ratio = spec.eta * step["dW"][l].norm() / W[l].norm()
            assert row[f"ratio_dW_W_{l}"] == pytest.approx(ratio.item(), rel=1e-10)
            assert row[f"norm_delta_{l + 1}"] == pytest.approx(delta_drive[l + 1].norm().item(), rel=1e-10)
        for l in range(1, d):
            assert row[f"angle_W_Bt_{l}"] == pytest.approx(angle_deg(W[l], B[l].T).item(), abs=1e-6)
            assert row[f"angle_dW_Bt_{l}"] == pytest.approx(angle_deg(step["dW"][l], B[l].T).item(), abs=1e-6)
            assert row[f"norm_B_{l}"] == pytest.approx(B[l].norm().item(), rel=1e-10)
        expected_all = angle_deg_concat(W[1:], [B[l].T for l in range(1, d)]).item()
        assert row["angle_W_Bt_all"] == pytest.approx(expected_all, abs=1e-6)
        assert row[f"angle_dWfa_dWbp_{d - 1}"] == pytest.approx(0.0, abs=1e-5)  # output layer: identical
    assert (metrics["epoch"] == metrics["iteration"] // 8).all()
    expected_columns = (
        ["iteration", "epoch", "loss", "angle_W_Bt_all"]
        + [f"angle_W_Bt_{l}" for l in range(1, d)]
        + [f"angle_dWfa_dWbp_{l}" for l in range(d)]
        + [f"angle_dWrule_dWbp_{l}" for l in range(d)]
        + [f"angle_dW_Bt_{l}" for l in range(1, d)]
        + [f"angle_dW_W_{l}" for l in range(d)]
        + [f"norm_W_{l}" for l in range(d)]
        + [f"norm_W_rel_{l}" for l in range(d)]
        + [f"norm_B_{l}" for l in range(1, d)]
        + [f"ratio_dW_W_{l}" for l in range(d)]
        + [f"norm_delta_{l}" for l in range(1, d + 1)]
    )
    assert list(metrics.columns) == expected_columns


def test_observers_see_the_state_before_the_step(synthetic, tmp_path):
    spec = _spec(rule="bp", eta=1e-2, bias=True)
    recorder = Recorder()
    result = train_run(spec, synthetic, tmp_path / "run", observers=[recorder], log=_quiet)
    for before, after in zip(recorder.steps, recorder.steps[1:]):
        for l in range(len(spec.sizes) - 1):
            torch.testing.assert_close(after["W"][l], before["W"][l] + spec.eta * before["dW"][l])
            torch.testing.assert_close(after["b"][l], before["b"][l] + spec.eta * before["db"][l])
    assert pd.read_parquet(tmp_path / "run" / "recorder.parquet")["k"].tolist() == list(range(24))
    assert "recorder" in result.files


def test_wn_keeps_column_norms_at_gamma_at_every_step(synthetic, tmp_path):
    spec = _spec(rule="fa", wn=True, gamma=0.6, ibn=True, eta=5e-3)
    recorder = Recorder()
    train_run(spec, synthetic, tmp_path / "run", observers=[recorder], log=_quiet)
    for step in recorder.steps:
        for W in step["W"]:
            torch.testing.assert_close(W.norm(dim=0), torch.full((W.shape[1],), 0.6, dtype=W.dtype))
    for B in recorder.B[1:]:
        torch.testing.assert_close(B.norm(dim=0), torch.ones(B.shape[1], dtype=B.dtype))
    # biases are learned but never normalised
    assert not torch.allclose(recorder.steps[-1]["b"][0].norm(), recorder.steps[0]["b"][0].norm())


def test_bias_off_keeps_zero_biases(synthetic, tmp_path):
    result = train_run(_spec(bias=False, eta=1e-2), synthetic, tmp_path / "run", log=_quiet)
    weights = np.load(result.files["weights"])
    for l in range(1, len(SMALL["sizes"])):
        assert not weights[f"b{l}_final"].any()


def test_metrics_off_records_the_same_loss_and_trains_the_same(synthetic, tmp_path):
    on = train_run(_spec(metrics=True), synthetic, tmp_path / "on", log=_quiet)
    off = train_run(_spec(metrics=False), synthetic, tmp_path / "off", log=_quiet)
    m_on, m_off = pd.read_parquet(on.files["metrics"]), pd.read_parquet(off.files["metrics"])
    assert list(m_off.columns) == ["iteration", "epoch", "loss"]
    np.testing.assert_array_equal(m_on["loss"].to_numpy(), m_off["loss"].to_numpy())
    np.testing.assert_array_equal(np.load(on.files["snapshots"])["theta"], np.load(off.files["snapshots"])["theta"])


@pytest.mark.parametrize("rule,sizes", [("fa", SMALL["sizes"]), ("bp", SQUARE), ("dfa", SQUARE), ("kp", SQUARE),
                                        ("usf", SMALL["sizes"]), ("drtp", SQUARE)])
def test_compare_rules_off_drops_only_the_update_angle(synthetic, tmp_path, rule, sizes):
    """Without the other rules' updates the run trains the same and records every other measure
    exactly as with them; only the update angles angle(dW^FA, dW^BP) and angle(dW^rule, dW^BP) are gone."""
    on = train_run(_spec(rule=rule, sizes=sizes, compare_rules=True), synthetic, tmp_path / "on", log=_quiet)
    off = train_run(_spec(rule=rule, sizes=sizes, compare_rules=False), synthetic, tmp_path / "off", log=_quiet)
    m_on, m_off = pd.read_parquet(on.files["metrics"]), pd.read_parquet(off.files["metrics"])
    d = len(sizes) - 1
    dropped = [f"angle_dWfa_dWbp_{l}" for l in range(d)] if rule in ("bp", "fa", "dfa") else []
    dropped += [f"angle_dWrule_dWbp_{l}" for l in range(d)]
    assert list(m_off.columns) == [c for c in m_on.columns if c not in dropped]
    assert all(c in m_on.columns for c in dropped)
    # the Gram matrices differ in size only: every product they share is the same number
    pd.testing.assert_frame_equal(m_on.drop(columns=dropped), m_off, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.load(on.files["snapshots"])["theta"], np.load(off.files["snapshots"])["theta"])
    assert json.loads((tmp_path / "off" / "run.json").read_text())["spec"]["compare_rules"] is False


def test_same_seed_gives_identical_results_and_different_seeds_differ(synthetic, tmp_path):
    a = train_run(_spec(seed=5), synthetic, tmp_path / "a", log=_quiet)
    b = train_run(_spec(seed=5), synthetic, tmp_path / "b", log=_quiet)
    c = train_run(_spec(seed=6), synthetic, tmp_path / "c", log=_quiet)
    pd.testing.assert_frame_equal(pd.read_parquet(a.files["metrics"]), pd.read_parquet(b.files["metrics"]))
    pd.testing.assert_frame_equal(pd.read_parquet(a.files["evaluation"]), pd.read_parquet(b.files["evaluation"]))
    wa, wc = np.load(a.files["weights"]), np.load(c.files["weights"])
    assert not np.array_equal(wa["W0_init"], wc["W0_init"])
    assert not np.array_equal(wa["B1"], wc["B1"])


def test_same_seed_same_initial_weights_under_every_rule(synthetic, tmp_path):
    inits = [np.load(train_run(_spec(rule=r, epochs=1), synthetic, tmp_path / r, log=_quiet).files["weights"]) for r in ("bp", "fa", "dfa")]
    for name in ("W0_init", "W3_init", "b2_init", "B1", "B3"):
        assert all(np.array_equal(inits[0][name], w[name]) for w in inits[1:])


# --------------------------------------------------------------------------------------------
# Evaluation, phases, labels
# --------------------------------------------------------------------------------------------


def test_evaluation_at_every_epoch_start_and_after_the_last(synthetic, tmp_path):
    result = train_run(_spec(epochs=4), synthetic, tmp_path / "run", log=_quiet)
    ev = pd.read_parquet(result.files["evaluation"])
    assert list(ev.columns) == ["epoch", "iteration", "phase", "test_accuracy", "test_loss"]
    assert ev["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert ev["iteration"].tolist() == [0, 8, 16, 24, 32]
    assert result.final_test_accuracy == ev["test_accuracy"].iloc[-1]
    assert ev["test_loss"].iloc[-1] < ev["test_loss"].iloc[0]


def test_phase_boundary_draws_a_new_code_map_and_evaluates_both(synthetic, tmp_path):
    lines = []
    result = train_run(_spec(epochs=4, phases=[2, 2], eta=5e-3), synthetic, tmp_path / "run", log=lines.append)
    ev = pd.read_parquet(result.files["evaluation"])
    assert ev[["epoch", "phase"]].values.tolist() == [[0, 0], [1, 0], [2, 0], [2, 1], [3, 1], [4, 1]]
    # the same network scored against the old and the new code map
    at_boundary = ev[ev["epoch"] == 2]
    assert at_boundary["test_loss"].iloc[0] != at_boundary["test_loss"].iloc[1]
    assert not torch.equal(data.phase_codes("five_hot", 0, 0), data.phase_codes("five_hot", 0, 1))
    assert len(lines) == 5 and all("test_acc" in line and "it/s" in line for line in lines)


def test_labels_argument_replaces_the_training_labels(synthetic, tmp_path):
    recorder = Recorder()
    flipped = (synthetic.y_train + 1) % 10
    train_run(_spec(label_noise=100.0), synthetic, tmp_path / "run", observers=[recorder], labels=flipped, log=_quiet)
    step = recorder.steps[0]
    assert torch.equal(step["labels"], flipped[step["batch_index"]])
    with pytest.raises(ValueError, match="label_noise"):
        train_run(_spec(label_noise=20.0), synthetic, tmp_path / "run2", log=_quiet)
    with pytest.raises(ValueError, match="label_noise is 0"):  # noisy labels under a spec that says none
        train_run(_spec(), synthetic, tmp_path / "run3", labels=flipped, log=_quiet)
    assert not (tmp_path / "run3").exists()


# --------------------------------------------------------------------------------------------
# Divergence and artifacts
# --------------------------------------------------------------------------------------------


def test_divergence_is_recorded_not_raised(synthetic, tmp_path):
    spec = _spec(activation="linear", eta=1e6, dtype="float32", epochs=5)
    lines = []
    result = train_run(spec, synthetic, tmp_path / "run", log=lines.append)
    assert result.status == "diverged"
    assert result.final_test_accuracy is None
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "diverged"
    k = info["divergence"]["iteration"]
    assert info["divergence"]["reason"].startswith("non-finite")
    metrics = pd.read_parquet(result.files["metrics"])
    assert len(metrics) == k + 1 < 5 * 8
    assert np.isfinite(metrics["loss"].iloc[:k]).all() and not np.isfinite(metrics["loss"].iloc[k])
    assert any("diverged" in line for line in lines)
    for name in ("metrics.parquet", "evaluation.parquet", "snapshots.npz", "weights.npz", "run.json"):
        assert (tmp_path / "run" / name).is_file()
    assert (np.load(result.files["snapshots"])["iterations"] <= k).all()


def test_artifact_dir_is_complete_atomic_and_self_describing(synthetic, tmp_path):
    spec = _spec(epochs=2, snapshot_every=3)
    result = train_run(spec, synthetic, tmp_path / "runs" / "seed0", log=_quiet)
    run_dir = tmp_path / "runs" / "seed0"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seed0"]  # no temp sibling left
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["metrics.parquet", "evaluation.parquet", "snapshots.npz", "weights.npz", "run.json"]
    )
    info = json.loads((run_dir / "run.json").read_text())
    assert RunSpec.from_dict(info["spec"]) == spec
    assert info["seed"] == spec.seed and info["status"] == "completed" and info["divergence"] is None
    assert info["code_version"] == artifacts.code_version()
    assert info["torch_version"] == torch.__version__ and info["device"].startswith("cpu")
    assert info["dataset"] == {"toy": True}
    assert info["timings"]["total_s"] > 0
    assert info["final"]["test_accuracy"] == result.final_test_accuracy

    snaps = np.load(run_dir / "snapshots.npz")
    weights = np.load(run_dir / "weights.npz")
    assert snaps["iterations"].tolist() == [0, 3, 6, 9, 12, 15, 16]
    assert snaps["theta"].dtype == np.float32
    shapes = json.loads(str(snaps["shapes"]))
    d = len(spec.sizes) - 1
    assert shapes["W"] == [[spec.sizes[l], spec.sizes[l + 1]] for l in range(d)]
    for when, row in (("init", 0), ("final", -1)):
        theta = np.concatenate([weights[f"W{l}_{when}"].ravel() for l in range(d)]
                               + [weights[f"b{l}_{when}"] for l in range(1, d + 1)])
        np.testing.assert_array_equal(snaps["theta"][row], theta.astype(np.float32))

    # a rerun replaces the directory as a whole
    train_run(_spec(epochs=1), synthetic, run_dir, log=_quiet)
    assert json.loads((run_dir / "run.json").read_text())["spec"]["epochs"] == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seed0"]


def test_a_failed_run_leaves_no_directory(synthetic, tmp_path):
    class Broken(Recorder):
        def step(self, k, net, state):
            if k == 3:
                raise RuntimeError("observer failed")

    with pytest.raises(RuntimeError, match="observer failed"):
        train_run(_spec(), synthetic, tmp_path / "run", observers=[Broken()], log=_quiet)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Run spec validation
# --------------------------------------------------------------------------------------------


def test_run_spec_round_trips_through_a_plain_dict():
    spec = RunSpec(**{**SMALL, "rule": "bp", "wn": True, "gamma": 1, "phases": [1, 2], "observers": {"shadow": {"a": 1}}})
    as_dict = spec.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert RunSpec.from_dict(as_dict) == spec
    assert spec.gamma == 1.0 and isinstance(spec.gamma, float)
    assert RunSpec(epochs=7).phases == (7,)


@pytest.mark.parametrize(
    "changes,named",
    [
        ({"rule": "hebb"}, "rule"),
        ({"activation": "softplus"}, "activation"),
        ({"targets": "seven_hot"}, "targets"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"eta": -1e-3}, "eta"),
        ({"wn": True}, "gamma"),
        ({"gamma": 0.6}, "gamma"),
        ({"sizes": [225, 50, 10]}, "sizes"),
        ({"phases": [1, 1]}, "phases"),
        ({"batch_size": 0}, "batch_size"),
        ({"label_noise": 120}, "label_noise"),
        ({"bias": "yes"}, "bias"),
    ],
)
def test_bad_spec_values_are_errors_naming_the_field(changes, named):
    with pytest.raises(ValueError, match=named):
        RunSpec(**{**SMALL, **changes})


def test_unknown_spec_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match="learning_rate"):
        RunSpec.from_dict({"learning_rate": 0.1})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        RunSpec(device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_the_cpu_run(synthetic, tmp_path):
    spec = _spec(rule="fa", wn=True, gamma=1.0, ibn=True, eta=2e-3)
    cpu = train_run(spec, synthetic, tmp_path / "cpu", log=_quiet)
    gpu = train_run(RunSpec(**{**spec.to_dict(), "device": "cuda"}), synthetic, tmp_path / "gpu", log=_quiet)
    assert gpu.status == "completed" and "cuda" in json.loads((tmp_path / "gpu" / "run.json").read_text())["device"]
    m_cpu, m_gpu = pd.read_parquet(cpu.files["metrics"]), pd.read_parquet(gpu.files["metrics"])
    np.testing.assert_allclose(m_gpu.to_numpy(), m_cpu.to_numpy(), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(np.load(gpu.files["snapshots"])["theta"], np.load(cpu.files["snapshots"])["theta"], rtol=1e-6, atol=1e-7)
    assert gpu.final_test_accuracy == cpu.final_test_accuracy


def test_input_size_must_match_the_data(synthetic, tmp_path):
    with pytest.raises(ValueError, match="sizes"):
        train_run(_spec(sizes=[15, 12, 50]), synthetic, tmp_path / "run", log=_quiet)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# Real MNIST (a subset)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bp_and_fa_learn_real_mnist_and_fa_aligns(mnist_subset, tmp_path):
    """5,000 train / 1,000 test images, 100 epochs of 5 batches of 1,000 (500 iterations) per rule."""
    results = {}
    for rule, eta in (("bp", 4e-4), ("fa", 5e-4)):
        spec = RunSpec(rule=rule, eta=eta, epochs=100, snapshot_every=0, threads=1)
        results[rule] = train_run(spec, mnist_subset, tmp_path / rule, log=_quiet)
    assert results["bp"].final_test_accuracy > 0.8
    assert results["fa"].final_test_accuracy > 0.6
    final = pd.read_parquet(results["fa"].files["metrics"]).iloc[-1]
    for l in range(1, 5):
        assert final[f"angle_W_Bt_{l}"] < 90
    assert final["angle_dWfa_dWbp_4"] == pytest.approx(0.0, abs=0.1)
    assert math.isfinite(final["loss"])
