"""Alignment terms (method §6): the terms, the expansion, the remainder, the observer tables."""

import math

import pytest
import torch

from fa_analysis import alignment_terms as at
from fa_analysis.measures import angle_deg
from mechanisms_synthetic import brute_force_sums, synthetic_fa_run

SETTINGS = {"iterations": [30, 59], "max_lag": 12, "lags_over_time": [1, 5, 7], "every": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# The terms as functions


def test_running_sum_of_linear_terms_equals_sum_over_lags():
    B, eta, k = randn(6, 5, seed=1), 0.01, 9
    P = [randn(7, 6, seed=10 + j) for j in range(k + 1)]
    by_lag = sum(at.linear_term(B, at.M_matrix(P[k - o], P[k]), eta) for o in range(1, k + 1))
    running = at.linear_term(B, at.M_matrix(sum(P[:k]), P[k]), eta)
    assert torch.allclose(by_lag, running, rtol=1e-12, atol=1e-15)


def test_with_a_linear_activation_the_nonlinear_and_linear_terms_coincide():
    n_b, n_prev, n_l, n_next, eta = 8, 7, 6, 5, 0.02
    L_past, L_now = randn(n_b, n_prev, seed=1), randn(n_b, n_prev, seed=2)
    Z_past, W_past, b = randn(n_b, n_l, seed=3), randn(n_prev, n_l, seed=4), randn(n_l, seed=5)
    delta_past, delta_now, B = randn(n_b, n_next, seed=6), randn(n_b, n_next, seed=7), randn(n_next, n_l, seed=8)
    nonlinear = at.nonlinear_term(L_past, Z_past, delta_past, W_past, L_now, delta_now, b, B, eta, "linear")
    linear = at.linear_term(B, at.M_matrix(at.P_matrix(L_past, delta_past), at.P_matrix(L_now, delta_now)), eta)
    assert nonlinear.shape == (n_l, n_next)
    assert torch.allclose(nonlinear, linear, rtol=1e-12)
    bent = at.nonlinear_term(L_past, Z_past, delta_past, W_past, L_now, delta_now, b, B, eta, "tanh_relu")
    assert not torch.allclose(bent, linear)  # the f' factors matter otherwise


def test_skew_symmetric_part_of_M_gives_a_term_orthogonal_to_Bt():
    B, eta = randn(6, 9, seed=1), 0.1
    A = randn(6, 6, seed=2)
    M_skew, M_psd = A - A.T, A @ A.T
    Bt = B.T
    assert torch.dot(Bt.flatten(), at.linear_term(B, M_skew, eta).flatten()).abs() < 1e-10
    assert angle_deg(at.linear_term(B, M_skew, eta), Bt).item() == pytest.approx(90.0, abs=1e-8)
    assert angle_deg(at.linear_term(B, M_psd, eta), Bt).item() < 60.0  # <B^T, B^T M> = tr(B B^T M) > 0


def test_past_factor_is_the_transposed_update_of_the_layer_below():
    run = synthetic_fa_run(iterations=3, keep_history=True)
    for step in run.steps:
        for l in range(1, run.net.d):
            G = at.past_factor(step.L[l - 1], step.fprime[l], step.delta[l + 1], run.net.B[l])
            assert torch.allclose(G, step.dW[l - 1].T, rtol=1e-12, atol=1e-14)


def test_class_similarity_means_match_the_full_similarity_matrix():
    L_past, L_now = randn(30, 8, seed=1), randn(25, 8, seed=2)
    g = torch.Generator().manual_seed(3)
    y_past, y_now = torch.randint(0, 4, (30,), generator=g), torch.randint(0, 4, (25,), generator=g)
    S = L_past @ L_now.T
    same = y_past[:, None] == y_now[None, :]
    within, between = at.class_similarity(L_past, y_past, L_now, y_now, num_classes=4)
    assert within.item() == pytest.approx(S[same].mean().item(), rel=1e-12)
    assert between.item() == pytest.approx(S[~same].mean().item(), rel=1e-12)


# --------------------------------------------------------------------------------------------
# The expansion of Delta W_l[k]


def test_nonlinear_terms_are_the_first_order_expansion():
    """Without the terms the residual is O(eta); with the nonlinear terms O(eta^2): halving eta quarters it."""
    k, l = 20, 1
    ratios = {}
    for eta in (2e-4, 1e-4):
        run = synthetic_fa_run(activation="tanh", eta=eta, iterations=k + 1, keep_history=True)
        dW, zero, nonlinear, linear = brute_force_sums(run, k, l)
        ratios[eta] = ((dW - zero - nonlinear).norm() / dW.norm(), (dW - zero - linear).norm() / dW.norm())
    (nl_big, lin_big), (nl_small, lin_small) = ratios[2e-4], ratios[1e-4]
    assert nl_big / nl_small == pytest.approx(4.0, rel=0.1)
    assert lin_big / lin_small == pytest.approx(2.0, rel=0.1)
    assert nl_small < 1e-3 * lin_small


# --------------------------------------------------------------------------------------------
# The observer's tables


def test_lag_table_matches_terms_computed_from_the_full_history():
    k = 30
    run = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS)], iterations=k + 1, keep_history=True)
    lag = run.frames["terms_lag"].set_index(["iteration", "layer", "lag", "kind"])
    similarity = run.frames["terms_similarity"].set_index(["iteration", "layer", "lag", "labels"])
    steps, now, eta, act = run.steps, run.steps[k], run.spec.eta, run.spec.activation
    for l in (1, 2):
        B = run.net.B[l]
        for o in (1, 5, 12):
            past = steps[k - o]
            T = at.nonlinear_term(past.L[l - 1], past.Z[l], past.delta[l + 1], past.W[l - 1],
                                  now.L[l - 1], now.delta[l + 1], now.b[l - 1], B, eta, act)
            assert lag.loc[(k, l, o, "nonlinear"), "angle"] == pytest.approx(angle_deg(T, B.T).item(), abs=1e-8)
            assert lag.loc[(k, l, o, "nonlinear"), "norm"] == pytest.approx(T.norm().item(), rel=1e-9)
            within, between = at.class_similarity(past.L[l - 1], past.labels, now.L[l - 1], now.labels)
            row = similarity.loc[(k, l, o, "true")]
            assert row["within"] == pytest.approx(within.item(), rel=1e-12)
            assert row["between"] == pytest.approx(between.item(), rel=1e-12)


@pytest.mark.parametrize("activation", ["tanh_relu", "tanh", "relu", "sigmoid", "linear"])
def test_every_row_of_both_term_tables_equals_the_plain_formulas(activation):
    # the observer gathers the lags, takes zeta^1 from the engine's Z and fuses f'; the plain
    # formulas here take every factor from the stored states of steps k - o and k
    settings = {"iterations": [13], "max_lag": 6, "lags_over_time": [1, 4, 9], "every": 2}
    run = synthetic_fa_run([at.AlignmentTermsObserver(settings)], iterations=22, keep_history=True,
                           activation=activation, eta=5e-4 if activation == "linear" else 0.01)  # a linear net diverges at 0.01
    steps, eta = run.steps, run.spec.eta
    checked = 0
    for table in ("terms_time", "terms_lag"):
        for row in run.frames[table].itertuples():
            k, l, o = row.iteration, row.layer, row.lag
            past, now, B = steps[k - o], steps[k], run.net.B[l]
            if row.kind == "nonlinear":
                T = at.nonlinear_term(past.L[l - 1], past.Z[l], past.delta[l + 1], past.W[l - 1],
                                      now.L[l - 1], now.delta[l + 1], now.b[l - 1], B, eta, activation)
            else:
                M = at.M_matrix(at.P_matrix(past.L[l - 1], past.delta[l + 1]), at.P_matrix(now.L[l - 1], now.delta[l + 1]))
                T = at.linear_term(B, M, eta)
            assert row.norm == pytest.approx(T.norm().item(), rel=1e-11), (table, k, l, o, row.kind)
            assert row.angle == pytest.approx(angle_deg(T, B.T).item(), abs=1e-8), (table, k, l, o, row.kind)
            assert math.isfinite(row.norm) and row.norm > 0
            checked += 1
    # time: k = 2, 4, .., 20 with lags 1, 4, 9 where reachable; lag: k = 13, lags 1..6; two kinds, two layers
    assert checked == 2 * 2 * (sum(len([o for o in (1, 4, 9) if o <= k]) for k in range(2, 22, 2)) + 6)


def test_tables_cover_the_requested_iterations_lags_and_layers():
    run = synthetic_fa_run([at.AlignmentTermsObserver({**SETTINGS, "every": 2})], iterations=60)
    frames = run.frames
    assert set(frames) == {"terms_lag", "terms_time", "terms_similarity"}
    lag = frames["terms_lag"]
    assert set(lag["iteration"]) == {30, 59}
    assert set(lag["layer"]) == {1, 2}  # l = 1..d-1 for d = 3
    assert sorted(lag["lag"].unique()) == list(range(1, 13))
    assert set(lag["kind"]) == {"nonlinear", "linear"}
    assert len(lag) == 2 * 2 * 12 * 2
    time = frames["terms_time"]
    assert (time["iteration"] % 2 == 0).all() and (time["iteration"] >= time["lag"]).all()
    assert len(time[(time.layer == 1) & (time.lag == 7) & (time.kind == "linear")]) == len(range(8, 60, 2))
    similarity = frames["terms_similarity"]
    assert set(similarity["labels"]) == {"true", "permuted"}
    assert len(similarity[(similarity.iteration == 30)]) == 2 * 12 * 2  # layers x lags x label kinds
    for frame in frames.values():
        value_columns = frame.select_dtypes("float").columns
        assert frame[value_columns].notna().all().all()


def test_repeated_minibatches_align_the_terms_and_classes_shape_similarity():
    """A fixed cycle of 5 minibatches: lag 5 and 10 are the same data again (method §6, lag 60 on MNIST)."""
    run = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS)], eta=4e-3, iterations=60, n_batches=5)
    lag = run.frames["terms_lag"]
    late = lag[(lag.iteration == 59) & (lag.kind == "linear")].groupby("lag")["angle"].mean()
    assert late[[5, 10]].max() < late.drop([5, 10]).min()
    similarity = run.frames["terms_similarity"]
    true = similarity[similarity.labels == "true"]
    permuted = similarity[similarity.labels == "permuted"]
    assert (true["within"] > true["between"]).mean() > 0.95
    gap_true = (true["within"] - true["between"]).mean()
    gap_permuted = (permuted["within"] - permuted["between"]).abs().mean()
    assert gap_permuted < 0.25 * gap_true


def test_similarity_can_use_clean_labels_other_than_the_training_labels():
    clean = synthetic_fa_run(iterations=1).labels.flatten()
    same = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS, true_labels=clean)], iterations=35).frames
    default = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS)], iterations=35).frames
    assert same["terms_similarity"].equals(default["terms_similarity"])
    unrelated = torch.randint(0, 10, clean.shape, generator=torch.Generator().manual_seed(5))
    other = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS, true_labels=unrelated)], iterations=35).frames
    gap = lambda frame: (frame["within"] - frame["between"]).mean()
    true_rows = lambda frames: frames["terms_similarity"].query("labels == 'true'")
    assert gap(true_rows(other)) < 0.25 * gap(true_rows(default))
    assert other["terms_lag"].equals(default["terms_lag"])  # the terms do not depend on labels


def test_same_seed_gives_the_same_tables():
    a = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS)], iterations=35).frames
    b = synthetic_fa_run([at.AlignmentTermsObserver(SETTINGS)], iterations=35).frames
    for name in a:
        assert a[name].equals(b[name]), name


def test_settings_come_from_the_run_spec():
    run = synthetic_fa_run([at.AlignmentTermsObserver()], iterations=35, observer_settings={"alignment_terms": SETTINGS})
    assert set(run.frames["terms_lag"]["iteration"]) == {30}


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"max_lags": 3}, KeyError, "max_lags"),
        ({"max_lag": 0}, ValueError, "alignment_terms.max_lag"),
        ({"lags_over_time": [0, 60]}, ValueError, "alignment_terms.lags_over_time"),
        ({"every": 1.5}, ValueError, "alignment_terms.every"),
    ],
)
def test_bad_settings_name_the_key(changes, error, match):
    with pytest.raises(error, match=match):
        at.AlignmentTermsSettings.from_dict({**SETTINGS, **changes})


def test_observer_refuses_runs_the_expansion_does_not_hold_for():
    run = synthetic_fa_run(iterations=1)
    net = run.net
    for changes, match in (({"rule": "bp"}, "FA run"), ({"wn": True, "gamma": 1.0}, "without WN")):
        spec = type(run.spec)(**{**run.spec.to_dict(), **changes})
        with pytest.raises(ValueError, match=match):
            at.AlignmentTermsObserver(SETTINGS).start(net, spec, 10, "cpu")
    with pytest.raises(KeyError, match="alignment_terms"):
        at.AlignmentTermsObserver().start(net, run.spec, 10, "cpu")


def test_memory_holds_only_the_lags_needed():
    observer = at.AlignmentTermsObserver(SETTINGS)
    synthetic_fa_run([observer], iterations=200)
    assert observer.capacity == 12  # max(max_lag, lags_over_time), whatever the run length
    assert all(h.past.shape[0] == 13 for h in observer.history.values())  # and the step's own slot
    assert not math.isnan(observer.history[1].P.sum().item())
