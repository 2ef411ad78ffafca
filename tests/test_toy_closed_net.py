"""The closed two-layer net with an imposed error (method §11.3, §11.4): step, batching, signals, settings, tables."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fa_analysis import toy_closed_net as tcn
from fa_analysis.open_loop import SIGNAL_SEED_OFFSET, init_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGIME = {"every": 1, "mean": 0.0, "redraw_input": False}
CLOSED_NET = {
    "sizes": [100, 100, 10],
    "batch_size": 100,
    "init_std": 1.0,
    "repetitions": 3,
    "seed": 14,
    "wn_layers": [0, 1],
    "eta": 0.002,
    "regimes": {
        "fixed": {"every": 0, "mean": 0.0, "redraw_input": False},
        "every_2": {"every": 2, "mean": 0.0, "redraw_input": False},
        "every_1": {"every": 1, "mean": 0.0, "redraw_input": False},
        "shifted_fresh": {"every": 1, "mean": 0.5, "redraw_input": True},
    },
    "iterations": 150,
    "wn": {"regimes": {"every_3": {**REGIME, "every": 3}}, "gammas": [1.0, 0.7], "iterations": 20},
}
AUTOCORRELATION = {
    "sizes": [100, 100, 10],
    "batch_size": 100,
    "init_std": 1.0,
    "repetitions": 3,
    "seed": 15,
    "wn_layers": [0, 1],
    "betas": [0.0, 0.5, 1.0],
    "wn": [False, True],
    "gamma": 1.0,
    "record_every": 10,
    "error": {"eta": 0.001, "iterations": 150},
    "input": {"eta": 0.002, "iterations": 25, "beta_error": 0.8},
}
TINY = {"sizes": [4, 5, 3], "batch_size": 6, "repetitions": 2, "dtype": "float64"}


def closed_net(**changes):
    return {**copy.deepcopy(CLOSED_NET), **changes}


def autocorrelation(**changes):
    return {**copy.deepcopy(AUTOCORRELATION), **changes}


def numpy_angle(A, C):
    cos = (A * C).sum() / np.sqrt((A * A).sum() * (C * C).sum())
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def numpy_wn(W, gamma):
    return gamma * W / np.linalg.norm(W, axis=0, keepdims=True)


def numpy_fa_step(W_0, W_1, B_1, X, E):
    """The equations of method §11.3, written out: FA's dW_0, dW_1 and BP's dW_0 on the same state."""
    Z_1 = X @ W_0
    L_1 = np.maximum(Z_1, 0.0)
    Z_2 = L_1 @ W_1
    delta_2 = E * (Z_2 > 0)
    delta_1 = (delta_2 @ B_1) * (Z_1 > 0)
    delta_1_bp = (delta_2 @ W_1.T) * (Z_1 > 0)
    return X.T @ delta_1, L_1.T @ delta_2, X.T @ delta_1_bp


@pytest.mark.parametrize("gamma", [None, 0.7])
def test_one_step_equals_the_equations_in_float64(gamma):
    rng = np.random.default_rng(0)
    n_0, n_1, n_2, n_b, eta = 4, 5, 3, 6, 0.05
    W_0, W_1, B_1 = rng.normal(size=(n_0, n_1)), rng.normal(size=(n_1, n_2)), rng.normal(size=(n_2, n_1))
    steps = [(rng.normal(size=(n_b, n_0)), rng.normal(size=(n_b, n_2))) for _ in range(2)]
    as_stack = lambda A: torch.tensor(A)[None]
    record = tcn.train_closed_net(
        as_stack(W_0), as_stack(W_1), as_stack(B_1), iter([tuple(map(as_stack, step)) for step in steps]),
        iterations=1, eta=eta, gamma=gamma, compare_bp=True,
    )
    if gamma is not None:
        W_0, W_1 = numpy_wn(W_0, gamma), numpy_wn(W_1, gamma)
    angle_0 = numpy_angle(W_1, B_1.T)
    dW_0, dW_1, dW_0_bp = numpy_fa_step(W_0, W_1, B_1, *steps[0])
    dW_angle_0 = numpy_angle(dW_0, dW_0_bp)
    W_0, W_1 = W_0 + eta * dW_0, W_1 + eta * dW_1
    if gamma is not None:
        W_0, W_1 = numpy_wn(W_0, gamma), numpy_wn(W_1, gamma)
    dW_0, _, dW_0_bp = numpy_fa_step(W_0, W_1, B_1, *steps[1])  # measured at k = 1, never applied
    assert record.iterations == [0, 1]
    np.testing.assert_allclose(record.W_0[0].numpy(), W_0, rtol=1e-12)
    np.testing.assert_allclose(record.W_1[0].numpy(), W_1, rtol=1e-12)
    np.testing.assert_allclose(record.angle_W1_B1t[:, 0].numpy(), [angle_0, numpy_angle(W_1, B_1.T)], rtol=1e-10)
    np.testing.assert_allclose(
        record.angle_dW0fa_dW0bp[:, 0].numpy(), [dW_angle_0, numpy_angle(dW_0, dW_0_bp)], rtol=1e-10
    )
    assert abs(record.angle_W1_B1t[1, 0] - record.angle_W1_B1t[0, 0]) > 1e-3  # the step did something
    live_1 = ((np.maximum(steps[1][0] @ W_0, 0.0) @ W_1) > 0).any(axis=0).sum()
    assert record.live_outputs[1, 0].item() == live_1


def test_a_net_whose_outputs_are_all_dead_stops_learning():
    """With W_1 <= 0 every Z_2 = L_1 W_1 <= 0 (L_1 >= 0): no error reaches W_1 or W_0, dW_0 has no angle."""
    s = tcn.ClosedNetSettings.from_dict(closed_net(**TINY))
    W_0, W_1, B_1 = init_weights(s)
    record = tcn.train_closed_net(
        W_0, -W_1.abs(), B_1, tcn.regime_signals(s.regimes["every_1"], s), 5, 0.1, compare_bp=True
    )
    assert torch.equal(record.W_0, W_0) and torch.equal(record.W_1, -W_1.abs())
    assert (record.live_outputs == 0).all() and record.angle_dW0fa_dW0bp.isnan().all()


@pytest.mark.parametrize("gamma", [None, 1.0])
def test_batched_repetitions_equal_one_repetition_at_a_time(gamma):
    s = tcn.ClosedNetSettings.from_dict(closed_net(**{**TINY, "repetitions": 3}))
    W_0, W_1, B_1 = init_weights(s)
    stream = tcn.regime_signals(tcn.Regime(every=1, redraw_input=True), s)
    steps = [next(stream) for _ in range(13)]
    run = lambda sl, signals: tcn.train_closed_net(
        W_0[sl], W_1[sl], B_1[sl], iter(signals), 12, 0.05, gamma=gamma, record_every=5, compare_bp=True
    )
    batched = run(slice(None), steps)
    assert batched.iterations == [0, 5, 10, 12]
    for r in range(3):
        single = run(slice(r, r + 1), [(X[r : r + 1], E[r : r + 1]) for X, E in steps])
        same = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        same(single.W_0[0], batched.W_0[r])
        same(single.angle_W1_B1t[:, 0], batched.angle_W1_B1t[:, r])
        same(single.angle_dW0fa_dW0bp[:, 0], batched.angle_dW0fa_dW0bp[:, r])
        same(single.live_outputs[:, 0], batched.live_outputs[:, r])


@pytest.mark.parametrize("sweep", tcn.SWEEPS)
def test_batched_betas_equal_one_beta_at_a_time(sweep):
    """Common random numbers: the sweep run for beta = 0.5 alone is that beta's rows of the full sweep."""
    full = tcn.run_autocorrelation(autocorrelation(**TINY), sweep, wn=True)
    alone = tcn.run_autocorrelation(autocorrelation(**TINY, betas=[0.5]), sweep, wn=True)
    pd.testing.assert_frame_equal(full[full.beta == 0.5].reset_index(drop=True), alone, rtol=1e-12, atol=1e-12)


def test_regime_streams_do_what_they_say():
    s = tcn.ClosedNetSettings.from_dict(closed_net(repetitions=4))
    take = lambda name: [next(stream) for stream in [tcn.regime_signals(s.regimes[name], s)] for _ in range(8)]
    fixed, every_2, every_1, shifted = (take(name) for name in ("fixed", "every_2", "every_1", "shifted_fresh"))
    X_0, E_0 = fixed[0]
    assert all(torch.equal(X, X_0) and torch.equal(E, E_0) for X, E in fixed)
    for k in range(1, 8):  # every_2: E changes exactly when k is even, X never
        assert torch.equal(every_2[k][1], every_2[k - 1][1]) == (k % 2 == 1)
        assert torch.equal(every_2[k][0], X_0) and torch.equal(every_1[k][0], X_0)
        assert not torch.equal(every_1[k][1], every_1[k - 1][1])
        assert not torch.equal(shifted[k][0], shifted[k - 1][0]) and not torch.equal(shifted[k][1], shifted[k - 1][1])
    assert torch.equal(every_2[0][1], E_0) and torch.equal(shifted[0][0], X_0 + 0.5)  # one start for all regimes
    X_all = torch.stack([X for X, _ in shifted])
    E_all = torch.stack([E for _, E in shifted])
    assert abs(X_all.mean().item() - 0.5) < 0.01 and abs(X_all.std().item() - 1.0) < 0.01
    assert abs(E_all.mean().item() - 0.5) < 0.02
    assert abs(torch.stack([E for _, E in every_1]).mean().item()) < 0.02


def test_autoregressive_recursions_equal_their_formulas():
    s = tcn.AutocorrelationSettings.from_dict(autocorrelation(**TINY, betas=[0.0, 0.4, 1.0]))
    n, R, n_b, (n_0, _, n_2) = 3, s.repetitions, s.batch_size, s.sizes
    beta = np.array(s.betas)[:, None, None, None]
    noise = torch.Generator().manual_seed(s.seed + SIGNAL_SEED_OFFSET)
    draw = lambda n_cols: torch.randn((R, n_b, n_cols), generator=noise, dtype=torch.float64).numpy()
    X, E = draw(n_0), np.broadcast_to(draw(n_2), (n, R, n_b, n_2))
    stream = tcn.sweep_signals("error", s)
    for k in range(6):
        X_k, E_k = next(stream)
        np.testing.assert_allclose(X_k.numpy().reshape(n, R, n_b, n_0), np.broadcast_to(X, (n, R, n_b, n_0)))
        np.testing.assert_allclose(E_k.numpy().reshape(n, R, n_b, n_2), E, rtol=1e-12, atol=1e-15)
        E = beta * E + (1 - beta) * draw(n_2)
    first, later = next(tcn.sweep_signals("error", s))[1], next(stream)[1]
    assert torch.equal(first[2 * R :], later[2 * R :])  # beta = 1 holds E fixed, exactly
    noise.manual_seed(s.seed + SIGNAL_SEED_OFFSET)  # the input sweep's stream starts afresh
    X, E = np.broadcast_to(draw(n_0), (n, R, n_b, n_0)), draw(n_2)
    stream = tcn.sweep_signals("input", s)
    for k in range(6):
        X_k, E_k = next(stream)
        np.testing.assert_allclose(X_k.numpy().reshape(n, R, n_b, n_0), X, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(E_k.numpy().reshape(n, R, n_b, n_2), np.broadcast_to(E, (n, R, n_b, n_2)))
        X_noise, xi = draw(n_0), draw(n_2)
        X = beta * X + (1 - beta) * X_noise
        E = 0.8 * E + 0.2 * xi
    assert torch.equal(next(tcn.sweep_signals("input", s))[0][2 * R :], next(stream)[0][2 * R :])


def test_correlated_error_aligns_and_fresh_error_does_not():
    """method §11.3: a held error aligns W_1 with B_1^T; an error redrawn every iteration hardly does."""
    frame = tcn.run_closed_net(closed_net(), "regimes")
    assert list(frame.columns) == ["regime", "wn", "gamma", "repetition", "iteration", "angle_W1_B1t", "live_outputs"]
    assert len(frame) == 4 * 3 * 151
    initial = frame[frame.iteration == 0].groupby("regime")["angle_W1_B1t"].apply(list)
    assert all(angles == initial["fixed"] for angles in initial)  # the same weights in every regime
    final = frame[frame.iteration == 150].groupby("regime")["angle_W1_B1t"].mean()
    assert final["fixed"] < 65 and final["every_1"] > 80, final
    assert final["fixed"] < final["every_2"] < final["every_1"], final


def test_wn_group_runs_without_and_with_each_gamma():
    frame = tcn.run_closed_net(closed_net(), "wn")
    conditions = frame[["regime", "wn", "gamma"]].drop_duplicates()
    assert conditions["wn"].tolist() == [False, True, True]
    assert np.isnan(conditions["gamma"].iloc[0]) and conditions["gamma"].iloc[1:].tolist() == [1.0, 0.7]
    assert frame["iteration"].max() == 20 and len(frame) == 3 * 3 * 21


def test_autocorrelation_table_and_its_recorded_iterations():
    frame = tcn.run_autocorrelation(autocorrelation(), "error", wn=False)
    assert list(frame.columns) == [
        "sweep", "beta", "wn", "repetition", "iteration", "angle_W1_B1t", "angle_dW0fa_dW0bp", "live_outputs"
    ]
    assert sorted(frame["iteration"].unique()) == list(range(0, 151, 10))
    assert frame.notna().all().all()
    final = frame[frame.iteration == 150].groupby("beta")["angle_W1_B1t"].mean()
    assert final[1.0] < final[0.0] - 10, final  # a held error aligns more than a fresh one
    assert tcn.run_autocorrelation(autocorrelation(), "input", wn=True)["iteration"].max() == 25  # the last is kept


@pytest.mark.parametrize(
    "which, changes, match",
    [
        ("closed_net", {"eta": -1.0}, r"toy\.closed_net\.eta must be a positive number"),
        ("closed_net", {"sizes": [100, 100]}, r"toy\.closed_net\.sizes"),
        ("closed_net", {"regimes": {"fixed": {"every": -1}}}, r"toy\.closed_net\.regimes\.fixed\.every"),
        ("closed_net", {"regimes": {"fixed": {"every": 1, "redraw_input": "yes"}}}, r"regimes\.fixed\.redraw_input"),
        ("closed_net", {"wn": {"regimes": {"a": REGIME}, "gammas": [0.0], "iterations": 5}}, r"closed_net\.wn\.gammas"),
        ("closed_net", {"wn_layers": [2]}, r"toy\.closed_net\.wn_layers"),
        ("closed_net", {"dtype": "float16"}, r"toy\.closed_net\.dtype"),
        ("autocorrelation", {"betas": [0.5, 1.5]}, r"toy\.autocorrelation\.betas"),
        ("autocorrelation", {"record_every": 0}, r"toy\.autocorrelation\.record_every"),
        ("autocorrelation", {"input": {"eta": 0.002, "iterations": 5, "beta_error": 2}}, r"input\.beta_error"),
        ("autocorrelation", {"error": {"eta": "fast", "iterations": 5}}, r"toy\.autocorrelation\.error\.eta"),
        ("autocorrelation", {"wn": [0, 1]}, r"toy\.autocorrelation\.wn must"),
    ],
)
def test_bad_settings_raise_naming_the_key(which, changes, match):
    if which == "closed_net":
        with pytest.raises(ValueError, match=match):
            tcn.run_closed_net(closed_net(**changes), "regimes")
    else:
        with pytest.raises(ValueError, match=match):
            tcn.run_autocorrelation(autocorrelation(**changes), "error", wn=False)


def test_missing_unknown_keys_and_unknown_names_are_errors():
    broken = closed_net()
    del broken["wn"]["iterations"]
    with pytest.raises(KeyError, match=r"toy\.closed_net\.wn lacks \['iterations'\]"):
        tcn.ClosedNetSettings.from_dict(broken)
    with pytest.raises(KeyError, match=r"toy\.autocorrelation has unknown keys \['beta'\]"):
        tcn.AutocorrelationSettings.from_dict(autocorrelation(beta=[0.5]))
    with pytest.raises(ValueError, match="group"):
        tcn.run_closed_net(closed_net(), "figure_3")
    with pytest.raises(ValueError, match="sweep"):
        tcn.run_autocorrelation(autocorrelation(), "target", wn=False)


def test_same_seed_same_table_twice_and_the_artifact_describes_it(tmp_path):
    short = closed_net(iterations=12, repetitions=2)
    out = tmp_path / "toy" / "closed_net_regimes.parquet"
    frame = tcn.closed_net_job(short, "regimes", out)
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)
    pd.testing.assert_frame_equal(tcn.run_closed_net(short, "regimes"), frame)
    other = tcn.run_closed_net({**short, "seed": 15}, "regimes")
    assert not np.array_equal(other["angle_W1_B1t"].to_numpy(), frame["angle_W1_B1t"].to_numpy())
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"] == short and meta["group"] == "regimes"
    assert meta["seeds"] == {"weights": 14, "signals": 14 + SIGNAL_SEED_OFFSET} and meta["code_version"]
    sweep = autocorrelation(**{"error": {"eta": 0.001, "iterations": 12}})
    sweep_out = tmp_path / "toy" / "autocorrelation_error_wn1.parquet"
    first = tcn.autocorrelation_job(sweep, "error", True, sweep_out)
    pd.testing.assert_frame_equal(tcn.run_autocorrelation(sweep, "error", True), first)
    assert json.loads(sweep_out.with_suffix(".json").read_text())["wn"] is True
