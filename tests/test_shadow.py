"""Shadow weight sequences (method §6): linearised and random-B' shadows beside a real FA run."""

import pandas as pd
import pytest
import torch

from fa_analysis import train
from fa_analysis.alignment_terms import AlignmentTermsObserver
from fa_analysis.shadow import SHADOW_COLUMNS, ShadowObserver, draw_random_B
from fa_analysis.measures import angle_deg
from mechanisms_synthetic import brute_force_sums, synthetic_fa_run

OFFSET = {"random_b_seed_offset": 7919}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def last_rows(frame):
    return frame[frame.iteration == frame.iteration.max()].set_index("layer")


def test_shadows_start_at_the_real_weights():
    shadow = synthetic_fa_run([ShadowObserver(OFFSET)], iterations=5).frames["shadow"]
    assert list(shadow.columns) == ["iteration", "layer", *SHADOW_COLUMNS, "rel_diff_Wlin_W"]
    first = shadow[shadow.iteration == 0]
    assert (first["angle_Wlin_Bt"] == first["angle_W_Bt"]).all()
    assert (first["angle_WBprime_Bt"] == first["angle_W_Bt"]).all()
    assert (first["rel_diff_Wlin_W"] == 0).all()
    assert len(shadow) == 5 * 2  # iterations x layers l = 1..d-1


def test_with_a_linear_activation_the_linearised_shadow_is_the_real_run():
    """For f(x) = x the expansion is exact (bias on: b_l[k] enters the zero-degree term), so W^lin = W."""
    shadow = synthetic_fa_run([ShadowObserver(OFFSET)], activation="linear", eta=1e-3, iterations=60).frames["shadow"]
    assert shadow["rel_diff_Wlin_W"].max() < 1e-10
    assert (shadow["angle_Wlin_Bt"] - shadow["angle_W_Bt"]).abs().max() < 1e-6
    assert shadow.loc[shadow.iteration == 59, "angle_W_Bt"].min() < 85  # the run did align (a nontrivial check)


def test_linearised_shadow_follows_the_real_run_for_small_eta_and_departs_for_large():
    small = synthetic_fa_run([ShadowObserver(OFFSET)], eta=1e-4, iterations=60).frames["shadow"]
    large = synthetic_fa_run([ShadowObserver(OFFSET)], eta=4e-3, iterations=60).frames["shadow"]
    assert last_rows(small)["rel_diff_Wlin_W"].max() < 0.02
    assert last_rows(large)["rel_diff_Wlin_W"].min() > 5 * last_rows(small)["rel_diff_Wlin_W"].max()


def test_linearised_shadow_equals_a_plain_loop_over_every_past_step():
    """W^lin_l[k] = W_l[0] + sum_{i<k} (zero-degree[i] + sum_o eta^2 B_l^T M^o_l[i]), each term from its
    formula; the table's angles and relative difference are those of these matrices, before step k."""
    k_max = 18
    observer = ShadowObserver(OFFSET)
    run = synthetic_fa_run([observer], eta=3e-3, iterations=k_max + 1, keep_history=True)
    table = run.frames["shadow"].set_index(["iteration", "layer"])
    for l in (1, 2):
        B_t = run.net.B[l].T
        W_lin = run.steps[0].W[l].clone()
        for k in range(k_max + 1):
            row, W = table.loc[(k, l)], run.steps[k].W[l]
            assert row["angle_W_Bt"] == pytest.approx(angle_deg(W, B_t).item(), abs=1e-9)
            assert row["angle_Wlin_Bt"] == pytest.approx(angle_deg(W_lin, B_t).item(), abs=1e-9)
            assert row["rel_diff_Wlin_W"] == pytest.approx(((W_lin - W).norm() / W.norm()).item(), rel=1e-9, abs=1e-15)
            _, zero, _, linear = brute_force_sums(run, k, l)
            W_lin += zero + linear
        assert torch.allclose(observer.W_lin[l], W_lin, rtol=1e-12, atol=1e-15)
    assert table["rel_diff_Wlin_W"].max() > 1e-3  # the shadow departs from the run: a nontrivial check


def test_random_B_shadow_equals_a_plain_loop_over_every_past_step():
    """W^B'_l[k] = W_l[0] + sum_{i<k} (zero-degree[i] + sum_o T'^o_l[i]), each T' from its formula with B'."""
    k_max = 18
    observer = ShadowObserver(OFFSET)
    run = synthetic_fa_run([observer], eta=3e-3, iterations=k_max + 1, keep_history=True)
    table = run.frames["shadow"].set_index(["iteration", "layer"])
    for l in (1, 2):
        B_prime = observer.B_prime[l]
        W_prime, W_prime_lin = run.steps[0].W[l].clone(), run.steps[0].W[l].clone()
        for k in range(k_max + 1):
            row = table.loc[(k, l)]
            assert row["angle_WBprime_Bprimet"] == pytest.approx(angle_deg(W_prime, B_prime.T).item(), abs=1e-9)
            assert row["angle_WBprime_Bt"] == pytest.approx(angle_deg(W_prime, run.net.B[l].T).item(), abs=1e-9)
            assert row["angle_WBprimelin_Bprimet"] == pytest.approx(angle_deg(W_prime_lin, B_prime.T).item(), abs=1e-9)
            _, zero, nonlinear, linear = brute_force_sums(run, k, l, B=B_prime)
            W_prime += zero + nonlinear
            W_prime_lin += zero + linear
        assert torch.allclose(observer.W_Bprime[l], W_prime, rtol=1e-12, atol=1e-15)
    assert (table["angle_WBprime_Bprimet"] - table["angle_WBprimelin_Bprimet"]).abs().max() > 1e-3  # f' matters


def test_with_a_linear_activation_the_nonlinear_and_linear_random_B_shadows_coincide():
    shadow = synthetic_fa_run([ShadowObserver(OFFSET)], activation="linear", eta=1e-3, iterations=60).frames["shadow"]
    assert shadow[list(SHADOW_COLUMNS)].notna().all().all()
    assert (shadow["angle_WBprime_Bprimet"] - shadow["angle_WBprimelin_Bprimet"]).abs().max() < 1e-7
    angle = shadow.set_index(["iteration", "layer"])["angle_WBprime_Bprimet"]
    assert (angle.loc[0] - angle.loc[59]).abs().min() > 0.5, angle  # the shadow moved: a nontrivial check


def test_random_B_shadow_aligns_with_its_own_B_prime_and_not_with_B():
    shadow = synthetic_fa_run([ShadowObserver(OFFSET)], eta=4e-3, iterations=200).frames["shadow"]
    first, final = shadow[shadow.iteration == 0].set_index("layer"), last_rows(shadow)
    # the shadow with the nonlinear terms turns towards its own B'^T, as the real W does towards B^T
    assert (first["angle_WBprime_Bprimet"] - final["angle_WBprime_Bprimet"] > 5).all(), final
    assert (final["angle_WBprimelin_Bprimet"] < 75).all(), final  # the linear terms exaggerate it
    assert ((final["angle_WBprime_Bt"] - 90).abs() < 8).all(), final


def test_B_prime_is_seeded_unrelated_to_B_and_drawn_like_B():
    like = torch.zeros((), dtype=torch.float64)
    sizes = [30, 40, 40, 10]
    a = draw_random_B(sizes, 0.1, seed=7919, ibn=False, like=like)
    b = draw_random_B(sizes, 0.1, seed=7919, ibn=False, like=like)
    c = draw_random_B(sizes, 0.1, seed=7920, ibn=False, like=like)
    assert a[0] is None and [B.shape for B in a[1:]] == [(40, 40), (10, 40)]
    assert all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
    assert not torch.equal(a[1], c[1])
    assert a[1].std().item() == pytest.approx(0.1, rel=0.1)
    unit = draw_random_B(sizes, 0.1, seed=7919, ibn=True, like=like)
    assert torch.allclose(unit[1].norm(dim=0), torch.ones(40, dtype=torch.float64))
    observer = ShadowObserver(OFFSET)
    run = synthetic_fa_run([observer], iterations=1)
    for l in (1, 2):
        assert observer.B_prime[l].shape == run.net.B[l].shape
        assert not torch.equal(observer.B_prime[l], run.net.B[l])


def test_bad_settings_and_runs_are_refused():
    run = synthetic_fa_run(iterations=1)
    for settings, error, match in (
        ({}, KeyError, "random_b_seed_offset"),
        ({"random_b_seed_offset": 1, "extra": 2}, KeyError, "extra"),
        ({"random_b_seed_offset": "7919"}, ValueError, "shadow.random_b_seed_offset"),
    ):
        with pytest.raises(error, match=match):
            ShadowObserver(settings).start(run.net, run.spec, 10, "cpu")
    bp = type(run.spec)(**{**run.spec.to_dict(), "rule": "bp"})
    with pytest.raises(ValueError, match="FA run"):
        ShadowObserver(OFFSET).start(run.net, bp, 10, "cpu")
    with pytest.raises(KeyError, match="shadow"):
        ShadowObserver().start(run.net, run.spec, 10, "cpu")


@pytest.mark.slow
def test_real_mnist_fa_run_writes_both_observers_tables(mnist_subset, tmp_path):
    """A short FA run on real MNIST through the training loop: the B' shadow aligns with B' like W with B."""
    terms = {"iterations": [40, 199], "max_lag": 40, "lags_over_time": [1, 20], "every": 1}
    spec = dict(experiment="shadow", condition="fa", seed=0, epochs=10, batch_size=250, eta=2e-3, rule="fa",
                snapshot_every=0, observers={"shadow": OFFSET, "alignment_terms": terms})
    result = train.train_run(spec, mnist_subset, tmp_path / "run", observers=[ShadowObserver(), AlignmentTermsObserver()],
                             log=lambda line: None)
    assert result.status == "completed"
    shadow = pd.read_parquet(tmp_path / "run" / "shadow.parquet")
    assert len(shadow) == 200 * 4
    final = last_rows(shadow)
    # as in the study: the shadow built with an unrelated B' aligns with B' as much as W with B (within
    # 3 degrees here), while the linearised shadow overstates the alignment; W^B' stays at 90 to B
    assert (final["angle_W_Bt"] < 87).all(), final
    assert ((final["angle_WBprime_Bprimet"] - final["angle_W_Bt"]).abs() < 3).all(), final
    assert (final["angle_Wlin_Bt"] < final["angle_WBprime_Bprimet"] - 1).all(), final
    assert ((final["angle_WBprime_Bt"] - 90).abs() < 5).all(), final
    for name in ("terms_lag", "terms_time", "terms_similarity"):
        frame = pd.read_parquet(tmp_path / "run" / f"{name}.parquet")
        assert len(frame) > 0 and set(frame["layer"]) == {1, 2, 3, 4}, name
    lag = pd.read_parquet(tmp_path / "run" / "terms_lag.parquet")
    assert sorted(lag["lag"].unique()) == list(range(1, 41))
