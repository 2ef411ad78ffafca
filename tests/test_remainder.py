"""The remainder of the expansion over the whole history (method §6), and the history it uses."""

import numpy as np
import pandas as pd
import pytest
import torch

from fa_analysis import train
from fa_analysis import alignment_terms as at
from fa_analysis.history import TermHistory, bytes_per_step
from fa_analysis.measures import angle_deg
from fa_analysis.remainder import REMAINDER_COLUMNS, RemainderObserver, RemainderSettings, history_bytes
from mechanisms_synthetic import brute_force_sums, synthetic_fa_run

SETTINGS = {"iterations": [7, 25], "every": 10}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# The history's sum of the nonlinear terms


@pytest.mark.parametrize("chunk, activation", [(1, "tanh_relu"), (4, "tanh_relu"), (16, "tanh_relu"),
                                               (4, "tanh"), (4, "relu"), (4, "sigmoid")])
def test_history_sum_equals_a_plain_loop_over_every_past_step(chunk, activation):
    """tanh_relu has its own fused form of f' (sigmoid-based); the others go through f and f'."""
    k = 22  # 22 = 5 full blocks of 4 and a partial one; less than one block of 16
    run = synthetic_fa_run(iterations=k + 1, keep_history=True, activation=activation)
    for l in (1, 2):
        history = TermHistory(run.net.sizes[l - 1], run.net.sizes[l], capacity=k, like=run.net.W[0], chunk=chunk)
        for j in range(k):
            history.push(run.steps[j].W[l - 1], run.steps[j].dW[l - 1])
        now = run.steps[k]
        summed = history.terms_sum(now.L[l - 1], now.delta[l + 1], now.b[l - 1], run.spec.eta, run.spec.activation)
        _, _, plain, _ = brute_force_sums(run, k, l)
        assert summed.shape == plain.shape
        assert torch.allclose(summed, plain, rtol=1e-12, atol=1e-16), (summed - plain).abs().max()


def test_history_refuses_a_step_beyond_its_capacity_and_sums_nothing_when_empty():
    like = torch.zeros((), dtype=torch.float64)
    history = TermHistory(3, 2, capacity=1, like=like)
    L, delta, b = torch.ones(4, 3, dtype=torch.float64), torch.ones(4, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    assert torch.equal(history.terms_sum(L, delta, b, 0.1, "tanh_relu"), torch.zeros(2, 5, dtype=torch.float64))
    history.push(torch.ones(3, 2), torch.ones(3, 2))
    with pytest.raises(IndexError, match="holds 1 steps"):
        history.push(torch.ones(3, 2), torch.ones(3, 2))


def test_bytes_per_step_of_the_protocol_network():
    # 2 (W and F) x (225*50 + 3 * 50*50) numbers x 4 bytes, as the history module's docstring says
    assert bytes_per_step([225, 50, 50, 50, 50, 50], 4) == 150_000
    settings = RemainderSettings.from_dict({"iterations": [66, 1260], "every": 60})
    assert history_bytes([225, 50, 50, 50, 50, 50], 4, settings, 1800) == 150_000 * 1740


# --------------------------------------------------------------------------------------------
# The observer


def test_observer_rows_equal_the_brute_force_expansion():
    k_values = (7, 25)
    run = synthetic_fa_run([RemainderObserver(SETTINGS)], eta=2e-3, iterations=26, keep_history=True)
    table = run.frames["remainder"].set_index(["iteration", "layer"])
    for k in k_values:
        for l in (1, 2):
            dW, zero, nonlinear, linear = brute_force_sums(run, k, l)
            row, Bt, norm = table.loc[(k, l)], run.net.B[l].T, dW.norm().item()
            R, R_lin = dW - zero - nonlinear, dW - zero - linear
            assert row["ratio_R_dW"] == pytest.approx(R.norm().item() / norm, rel=1e-9)
            assert row["angle_R_Bt"] == pytest.approx(angle_deg(R, Bt).item(), abs=1e-8)
            assert row["angle_terms_Bt"] == pytest.approx(angle_deg(nonlinear, Bt).item(), abs=1e-8)
            assert row["ratio_terms_dW"] == pytest.approx(nonlinear.norm().item() / norm, rel=1e-9)
            assert row["ratio_Rlin_dW"] == pytest.approx(R_lin.norm().item() / norm, rel=1e-9)
            assert row["angle_linear_sum_Bt"] == pytest.approx(angle_deg(linear, Bt).item(), abs=1e-8)
            assert row["angle_zero_Bt"] == pytest.approx(angle_deg(zero, Bt).item(), abs=1e-8)
            assert row["angle_dW_Bt"] == pytest.approx(angle_deg(dW, Bt).item(), abs=1e-8)


def test_table_has_the_measured_iterations_and_documented_columns():
    run = synthetic_fa_run([RemainderObserver(SETTINGS)], iterations=40)
    table = run.frames["remainder"]
    assert list(table.columns) == ["iteration", "layer", *REMAINDER_COLUMNS]
    assert sorted(table["iteration"].unique()) == [0, 7, 10, 20, 25, 30]
    assert set(table["layer"]) == {1, 2}
    first = table[table.iteration == 0]
    assert (first["ratio_R_dW"] < 1e-12).all()  # k = 0: Delta W is the zero-degree term
    assert first[["angle_terms_Bt", "angle_linear_sum_Bt"]].isna().all().all()  # empty sums: no direction
    later = table[table.iteration > 0]
    assert later[list(REMAINDER_COLUMNS)].notna().all().all()


def test_with_a_linear_activation_both_remainders_vanish_and_coincide():
    run = synthetic_fa_run([RemainderObserver({"iterations": [], "every": 1})], activation="linear", eta=1e-3, iterations=60)
    table = run.frames["remainder"]
    assert table["ratio_R_dW"].max() < 1e-9
    assert table["ratio_Rlin_dW"].max() < 1e-9
    later = table[table.iteration > 0]
    assert np.allclose(later["ratio_terms_dW"], later["ratio_linear_sum_dW"], rtol=1e-9)
    assert np.allclose(later["angle_terms_Bt"], later["angle_linear_sum_Bt"], atol=1e-7)
    assert table["ratio_linear_sum_dW"].iloc[-1] > 1e-2  # the terms themselves are not negligible


def test_remainder_is_small_for_small_eta_and_grows_with_eta():
    means = {"ratio_R_dW": [], "ratio_Rlin_dW": []}
    for eta in (1e-5, 1e-4, 1e-3):
        table = synthetic_fa_run([RemainderObserver({"iterations": [], "every": 1})], eta=eta, iterations=40).frames["remainder"]
        for column in means:
            means[column].append(table.loc[table.iteration > 0, column].mean())
    for column, values in means.items():
        assert values[0] < 0.01, column
        assert values[0] < values[1] < values[2], column
    # the nonlinear terms leave far less than the linear ones: R is the Taylor remainder
    assert all(r < 0.1 * r_lin for r, r_lin in zip(means["ratio_R_dW"], means["ratio_Rlin_dW"]))


@pytest.mark.parametrize(
    "settings, error, match",
    [
        ({"every": 1, "extra": 2}, KeyError, "extra"),
        ({"every": -1}, ValueError, "remainder.every"),
        ({"iterations": [3, -1]}, ValueError, "remainder.iterations"),
    ],
)
def test_bad_settings_name_the_key(settings, error, match):
    with pytest.raises(error, match=match):
        RemainderSettings.from_dict(settings)


def test_observer_refuses_runs_the_expansion_does_not_hold_for_and_histories_that_do_not_fit(monkeypatch):
    run = synthetic_fa_run(iterations=1)
    bp = type(run.spec)(**{**run.spec.to_dict(), "rule": "bp"})
    with pytest.raises(ValueError, match="FA run"):
        RemainderObserver(SETTINGS).start(run.net, bp, 10, "cpu")
    with pytest.raises(KeyError, match="remainder"):
        RemainderObserver().start(run.net, run.spec, 10, "cpu")
    monkeypatch.setattr("fa_analysis.history.available_bytes", lambda device: 1000)
    with pytest.raises(MemoryError, match=r"remainder's history of 25 steps .* remainder.every"):
        RemainderObserver(SETTINGS).start(run.net, run.spec, 26, "cpu")


@pytest.mark.slow
def test_real_mnist_remainder_is_small_and_shrinks_faster_than_eta(mnist_subset, tmp_path):
    """FA on real MNIST, batch 1000, float64: R is about 1 % of Delta W and second order in eta.

    ``Delta W`` and the zero-degree term are first order in eta, the terms second order, so the
    remainder is third order: halving eta divides ``||R|| / ||Delta W||`` by about 4 (by 2 for a
    quantity only one order above Delta W).
    """
    ratios = {}
    for eta in (5e-4, 2.5e-4):
        spec = dict(experiment="remainder", condition="fa", seed=0, epochs=30, batch_size=1000, eta=eta, rule="fa",
                    snapshot_every=0, dtype="float64", observers={"remainder": {"iterations": [66, 149], "every": 0}})
        result = train.train_run(spec, mnist_subset, tmp_path / f"run{eta}", observers=[RemainderObserver()], log=lambda line: None)
        assert result.status == "completed"
        table = pd.read_parquet(tmp_path / f"run{eta}" / "remainder.parquet").set_index(["iteration", "layer"])
        ratios[eta] = table["ratio_R_dW"]
        assert (table["ratio_R_dW"] < 0.05).all(), table
        assert (table["ratio_Rlin_dW"] > 5 * table["ratio_R_dW"]).all(), table
    shrink = ratios[5e-4] / ratios[2.5e-4]  # per (k, layer); the runs differ, so it scatters around 4
    assert (shrink > 2).all(), shrink  # more than halved: R is more than one order above Delta W
    assert 3 < np.exp(np.log(shrink).mean()) < 5.5, shrink  # quartered on average: two orders above
