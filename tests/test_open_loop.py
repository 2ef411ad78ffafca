"""The open-loop experiment (method §7): scenarios, beta sweep, seeds, artifacts."""

import copy
import json

import pandas as pd
import pytest
import torch

from fa_analysis import open_loop as ol

SHORT = {
    "sizes": [20, 100, 20],
    "batch_size": 100,
    "eta": 0.002,
    "iterations": 300,
    "repetitions": 4,
    "init_std": 1.0,
    "seed": 7,
    "scenarios": ["auto", "cross", "both", "none"],
    "beta_sweep": {"betas": [0.0, 1.0], "wn": [False, True], "gamma": 1.0},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings(**changes):
    s = copy.deepcopy(SHORT)
    s.update(changes)
    return s


@pytest.fixture(scope="module")
def scenario_frames():
    torch.set_num_threads(1)
    return {scenario: ol.run_open_loop(SHORT, scenario) for scenario in ol.SCENARIOS}


def test_none_stays_near_90_while_correlated_scenarios_align(scenario_frames):
    final = {s: ol.final_angles(f)["angle"].mean() for s, f in scenario_frames.items()}
    assert abs(final["none"] - 90) < 5, final
    for scenario in ("auto", "cross", "both"):
        assert final[scenario] < 75, final
    assert final["cross"] == min(final.values()), final  # method §10: "cross" aligns the most


def test_frame_layout_and_shared_initial_weights(scenario_frames):
    s = SHORT
    for frame in scenario_frames.values():
        assert list(frame.columns) == ["repetition", "iteration", "angle"]
        assert len(frame) == (s["iterations"] + 1) * s["repetitions"]
        assert sorted(frame["repetition"].unique()) == list(range(s["repetitions"]))
        assert frame["iteration"].max() == s["iterations"]
    initial = [f[f.iteration == 0].sort_values("repetition")["angle"].to_numpy() for f in scenario_frames.values()]
    for other in initial[1:]:
        assert (other == initial[0]).all()  # same seed: same W_1, B_1 in every scenario
    assert len(set(initial[0].round(6))) == s["repetitions"]  # fresh weights per repetition


def test_same_seed_same_result_and_another_seed_differs():
    short = settings(iterations=20, repetitions=2)
    a = ol.run_open_loop(short, "cross")
    pd.testing.assert_frame_equal(a, ol.run_open_loop(short, "cross"))
    b = ol.run_open_loop({**short, "seed": 8}, "cross")
    assert not (a["angle"].to_numpy() == b["angle"].to_numpy()).all()


def test_batched_repetitions_match_one_network_at_a_time():
    s = ol.OpenLoopSettings.from_dict(settings(iterations=15, repetitions=3, dtype="float64"))
    W_0, W_1, B_1 = ol.init_weights(s)
    angles = ol.train_open_loop(W_0, W_1, B_1, ol.scenario_signals("none", s), s.iterations, s.eta)
    signals = ol.scenario_signals("none", s)
    pairs = [next(signals) for _ in range(s.iterations)]
    for r in range(s.repetitions):
        W0, W1, B1 = W_0[r].clone(), W_1[r].clone(), B_1[r]
        for k, (L_0, delta_2) in enumerate(pairs):
            Z_1 = L_0[r] @ W0
            delta_1 = (delta_2[r] @ B1) * (Z_1 > 0)
            W1 = W1 + s.eta * torch.relu(Z_1).T @ delta_2[r]
            W0 = W0 + s.eta * L_0[r].T @ delta_1
            cos = (W1 * B1.T).sum() / (W1.norm() * B1.norm())
            assert torch.rad2deg(torch.arccos(cos)).item() == pytest.approx(angles[k + 1, r].item(), abs=1e-9)


def test_scenario_signals_follow_the_spec_table():
    s = ol.OpenLoopSettings.from_dict(settings(repetitions=2, batch_size=5))
    take = lambda scenario: [next(g) for g in [ol.scenario_signals(scenario, s)] for _ in range(3)]
    auto, cross, both, none = (take(x) for x in ("auto", "cross", "both", "none"))
    assert all(torch.equal(L, auto[0][0]) and torch.equal(d, auto[0][1]) for L, d in auto)
    assert not torch.equal(auto[0][0], auto[0][1])
    assert all(torch.equal(L, d) for L, d in cross) and not torch.equal(cross[0][0], cross[1][0])
    assert all(torch.equal(L, both[0][0]) and torch.equal(d, both[0][0]) for L, d in both)
    assert not torch.equal(none[0][0], none[0][1]) and not torch.equal(none[0][0], none[1][0])


def test_beta_recursion_for_delta_2_and_input_modes():
    s = ol.OpenLoopSettings.from_dict(settings(repetitions=1, batch_size=4))
    for mode in ol.BETA_SWEEP_INPUTS:
        stream = ol.beta_signals(0.4, mode, s)
        steps = [next(stream) for _ in range(4)]
        noise = ol._normal_draw(s)
        L_0, delta_2 = noise((1, 4, 20)), noise((1, 4, 20))
        for L, d in steps:
            assert torch.allclose(d, delta_2) and torch.allclose(L, L_0)
            L_noise, xi = noise((1, 4, 20)), noise((1, 4, 20))
            delta_2 = 0.4 * delta_2 + 0.6 * xi
            L_0 = {"autoregressive": 0.4 * L_0 + 0.6 * L_noise, "fresh": L_noise, "fixed": L_0}[mode]
    fixed = ol.beta_signals(1.0, "autoregressive", s)
    first = next(fixed)
    assert all(torch.equal(first[1], next(fixed)[1]) for _ in range(3))


@pytest.mark.parametrize("wn", [False, True])
def test_beta_sweep_aligns_at_beta_one_not_at_zero(wn):
    frame = ol.run_beta_sweep(settings(iterations=200, repetitions=3), wn=wn)
    assert list(frame.columns) == ["beta", "repetition", "iteration", "angle"]
    final = ol.final_angles(frame).groupby("beta")["angle"].mean()
    assert abs(final[0.0] - 90) < 6, final
    assert final[1.0] < 70, final


def test_wn_keeps_every_column_at_gamma():
    s = ol.OpenLoopSettings.from_dict(settings(repetitions=2))
    W_0, W_1, _ = ol.init_weights(s)
    ol._normalize_columns_per_repetition_(W_0, W_1, gamma=0.7)
    for W in (W_0, W_1):
        assert torch.allclose(W.norm(dim=-2), torch.full(W.shape[::2], 0.7), atol=1e-5)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"eta": -1.0}, "open_loop.eta"),
        ({"sizes": [20, 100]}, "open_loop.sizes"),
        ({"repetitions": 0}, "open_loop.repetitions"),
        ({"dtype": "float16"}, "open_loop.dtype"),
    ],
)
def test_bad_settings_name_the_key(changes, match):
    with pytest.raises(ValueError, match=match):
        ol.run_open_loop(settings(**changes), "auto")


def test_missing_key_unknown_scenario_and_size_mismatch_are_errors():
    broken = settings()
    del broken["eta"]
    with pytest.raises(KeyError, match="eta"):
        ol.run_open_loop(broken, "auto")
    with pytest.raises(ValueError, match="scenario"):
        ol.run_open_loop(settings(), "sideways")
    with pytest.raises(ValueError, match=r"sizes\[0\] == sizes\[2\]"):
        ol.run_open_loop(settings(sizes=[20, 100, 10]), "cross")
    with pytest.raises(ValueError, match="beta_sweep.betas"):
        ol.run_beta_sweep(settings(beta_sweep={"betas": [1.5], "gamma": 1.0}), wn=False)
    with pytest.raises(ValueError, match="beta_sweep.input"):
        ol.run_beta_sweep(settings(beta_sweep={"betas": [0.5], "gamma": 1.0, "input": "echo"}), wn=False)


def test_artifact_pair_is_self_describing(tmp_path):
    pytest.importorskip("fa_analysis.artifacts")
    short = settings(iterations=10, repetitions=2)
    out = tmp_path / "open_loop" / "cross.parquet"
    frame = ol.open_loop_job(short, "cross", out)
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"] == short
    assert meta["seed"] == 7 and meta["scenario"] == "cross"
    assert meta["code_version"]
    sweep_out = tmp_path / "open_loop" / "beta_wn1.parquet"
    sweep = ol.beta_sweep_job(short, True, sweep_out)
    assert json.loads(sweep_out.with_suffix(".json").read_text())["wn"] is True
    assert sorted(sweep["beta"].unique()) == [0.0, 1.0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["beta_wn1.json", "beta_wn1.parquet", "cross.json", "cross.parquet"]
