"""The rules the field compares FA with (method §1.6): sign symmetry (uSF, frSF, brSF), Kolen-Pollack
and DRTP, each against a hand-written float64 NumPy implementation of its equations."""


import numpy as np
import pandas as pd
import pytest
import torch

from toy_data import projection_problem
from fa_analysis import config, learning_rules
from fa_analysis.network import (
    backward_deltas,
    derivatives,
    draw_magnitudes,
    fixed_magnitudes,
    forward,
    init_network,
    kp_step_,
    magnitude_generator,
    output_error,
    sgd_step_,
    sign_feedback,
    weight_updates,
)
from fa_analysis.normalization import normalize_columns_, unit_columns_
from fa_analysis.spec import RunSpec
from fa_analysis.train import train_run

SIZES = [16, 12, 12, 9, 50]  # equal hidden layers (batched in the engine) and an odd one
NEW_RULES = ("usf", "frsf", "brsf", "kp", "drtp")
SEED_OFFSET = 3_000_017  # method §2.4: the magnitudes of brSF (and frSF's uniform ones)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic():
    return projection_problem(200, seed=123)


def _spec(rule, wn=False, **changes):
    values = dict(rule=rule, sizes=SIZES, batch_size=40, epochs=2, dtype="float64", eta=3e-3, threads=1,
                  wn=wn, gamma=0.9 if wn else None, ibn=wn, seed=4)
    return RunSpec(**{**values, **changes})


class Recorder:
    """Everything a step saw, in float64 copies: the state, its feedback in use, the batch, the update."""

    def start(self, net, spec, num_iterations, device):
        self.D = [None] + [D.double().numpy().copy() for D in net.D[1:]]
        self.steps = []

    def step(self, k, net, state):
        self.steps.append({
            "W": [w.numpy().copy() for w in net.W], "b": [b.numpy().copy() for b in net.b],
            "B": [None] + [B.numpy().copy() for B in net.B[1:]],
            "X": state.X.numpy().copy(), "Y": state.Y.numpy().copy(),
            "dW": [w.numpy().copy() for w in state.dW], "db": [b.numpy().copy() for b in state.db],
        })

    def finish(self):
        return {}


def _run(spec, synthetic, tmp_path):
    recorder = Recorder()
    result = train_run(spec, synthetic, tmp_path / spec.rule, observers=[recorder], log=lambda line: None)
    return recorder, pd.read_parquet(result.files["metrics"])


# --------------------------------------------------------------------------------------------
# The rules in plain NumPy, float64, from method §1.6
# --------------------------------------------------------------------------------------------


def _initial_state(spec):
    """W, b, B (FA's draw), D at k = 0 after WN and IBN, as float64 NumPy arrays."""
    net = init_network(spec.sizes, spec.init_std, seed=spec.seed, dtype=torch.float64)
    if spec.wn:
        normalize_columns_(net.W, spec.gamma)
    if spec.ibn:
        unit_columns_(net.B)
    return ([w.numpy().copy() for w in net.W], [b.numpy().copy() for b in net.b],
            [None] + [B.numpy().copy() for B in net.B[1:]], [None] + [D.numpy().copy() for D in net.D[1:]])


def _np_magnitudes(generator, spec):
    """brSF's magnitudes of one minibatch: |N(0, sigma^2)| in the shape of B_l, layer by layer."""
    M = [None]
    for l in range(1, len(spec.sizes) - 1):
        M_l = torch.randn(spec.sizes[l + 1], spec.sizes[l], generator=generator, dtype=torch.float64).numpy()
        M_l = np.abs(M_l) * spec.init_std
        if spec.ibn:
            M_l = M_l / np.linalg.norm(M_l, axis=0, keepdims=True)
        M.append(M_l)
    return M


def _np_step(rule, W, b, B_used, D, X, Y, settings):
    """One step's deltas and updates: forward, E, delta of ``rule`` through its feedback, dW, db."""
    d = len(W)
    Z, L = [None], [X]
    for l in range(d):
        Z.append(L[l] @ W[l] + b[l])
        L.append(np.tanh(np.maximum(Z[-1], 0)))
    fprime = [None] + [(Z[l] > 0) / np.cosh(Z[l]) ** 2 for l in range(1, d + 1)]
    E = Y - L[d]
    delta = [None] * (d + 1)
    delta[d] = E * fprime[d]
    for l in range(d - 1, 0, -1):
        if rule == "bp":
            delta[l] = (delta[l + 1] @ W[l].T) * fprime[l]
        elif rule == "drtp":
            delta[l] = (settings["target_scale"] * Y @ D[l]) * fprime[l]
        else:
            delta[l] = (delta[l + 1] @ B_used[l]) * fprime[l]
    dW = [L[l].T @ delta[l + 1] for l in range(d)]
    db = [delta[l].sum(0) for l in range(1, d + 1)]
    return dW, db


def _np_run(spec, recorder):
    """The whole run in NumPy on the recorded minibatches: the state, the feedback in use and the
    update of every step."""
    W, b, B, D = _initial_state(spec)
    rule, settings, eta, d = spec.rule, spec.rule_settings, spec.eta, len(spec.sizes) - 1
    generator = torch.Generator().manual_seed(spec.seed + SEED_OFFSET)
    if rule == "usf":
        c = settings["scale"] or spec.init_std
        M = [None] + [np.full_like(B[l], 1 / np.sqrt(B[l].shape[0]) if spec.ibn else c) for l in range(1, d)]
    elif rule == "frsf":
        M = [None] + [np.abs(B[l]) for l in range(1, d)]
    steps = []
    for step in recorder.steps:
        if rule == "brsf":
            M = _np_magnitudes(generator, spec)
        if rule in learning_rules.SIGN_RULES:
            B = [None] + [M[l] * np.sign(W[l]).T for l in range(1, d)]
        dW, db = _np_step(rule, W, b, B, D, step["X"], step["Y"], settings)
        dW_bp, _ = _np_step("bp", W, b, B, D, step["X"], step["Y"], settings)
        steps.append({"W": [w.copy() for w in W], "b": [x.copy() for x in b], "B": [None] + [x.copy() for x in B[1:]],
                      "dW": dW, "db": db, "dW_bp": dW_bp})
        decay = settings["decay"] if rule == "kp" else 0.0
        W = [(1 - decay) * W[l] + eta * dW[l] for l in range(d)]
        b = [b[l] + eta * db[l] for l in range(d)]
        if rule == "kp":
            eta_B = settings["eta_feedback"] or eta
            B = [None] + [(1 - decay) * B[l] + eta_B * dW[l].T for l in range(1, d)]
        if spec.wn:
            W = [spec.gamma * w / np.linalg.norm(w, axis=0, keepdims=True) for w in W]
    return steps


def _angle(A, C):
    cos = np.sum(A * C) / (np.linalg.norm(A) * np.linalg.norm(C))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


# --------------------------------------------------------------------------------------------
# The engine equals the NumPy rules, and the reference form in network.py does too
# --------------------------------------------------------------------------------------------


CASES = [(rule, wn) for rule in NEW_RULES for wn in (False, True)] + [("kp_decay", False), ("frsf_uniform", True),
                                                                     ("drtp_scaled", False), ("usf_scaled", False)]
VARIANTS = {"kp_decay": ("kp", {"decay": 0.01, "eta_feedback": 1e-3}), "frsf_uniform": ("frsf", {"magnitude": "uniform"}),
            "drtp_scaled": ("drtp", {"target_scale": 0.3}), "usf_scaled": ("usf", {"scale": 0.05})}


def _case_spec(case, wn):
    rule, settings = VARIANTS.get(case, (case, {}))
    return _spec(rule, wn, rule_settings=settings)


@pytest.mark.parametrize("case,wn", [c for c in CASES if c[0] != "frsf_uniform"])
def test_every_step_of_the_engine_equals_the_numpy_rule(synthetic, tmp_path, case, wn):
    """Every layer, every step (8 of them), with and without WN: state, feedback in use and update to 1e-12."""
    spec = _case_spec(case, wn)
    recorder, metrics = _run(spec, synthetic, tmp_path)
    expected = _np_run(spec, recorder)
    assert len(expected) == len(recorder.steps) == 8
    d = len(SIZES) - 1
    for k, (got, want) in enumerate(zip(recorder.steps, expected)):
        for l in range(d):
            np.testing.assert_allclose(got["W"][l], want["W"][l], rtol=0, atol=1e-12, err_msg=f"W_{l}[{k}]")
            np.testing.assert_allclose(got["b"][l], want["b"][l], rtol=0, atol=1e-12, err_msg=f"b_{l + 1}[{k}]")
            np.testing.assert_allclose(got["dW"][l], want["dW"][l], rtol=0, atol=1e-12, err_msg=f"dW_{l}[{k}]")
            np.testing.assert_allclose(got["db"][l], want["db"][l], rtol=0, atol=1e-12, err_msg=f"db_{l + 1}[{k}]")
            row = metrics.iloc[k]
            assert row[f"angle_dWrule_dWbp_{l}"] == pytest.approx(_angle(want["dW"][l], want["dW_bp"][l]), abs=1e-5)
        if spec.rule == "drtp":
            continue  # DRTP uses no B: its angle is to the unused fixed B, like BP's and DFA's
        for l in range(1, d):
            np.testing.assert_allclose(got["B"][l], want["B"][l], rtol=0, atol=1e-12, err_msg=f"B_{l}[{k}]")
            assert metrics.iloc[k][f"angle_W_Bt_{l}"] == pytest.approx(_angle(want["W"][l], want["B"][l].T), abs=1e-6)
            assert metrics.iloc[k][f"norm_B_{l}"] == pytest.approx(np.linalg.norm(want["B"][l]), rel=1e-10)


def test_frsf_uniform_magnitudes_are_fixed_draws_of_their_own_seed(synthetic, tmp_path):
    """frSF's uniform magnitudes: U(0, sqrt(3) sigma) from s + 3 000 017, columns to norm 1 with IBN, then fixed."""
    spec = _case_spec("frsf_uniform", True)
    recorder, _ = _run(spec, synthetic, tmp_path)
    generator = torch.Generator().manual_seed(spec.seed + SEED_OFFSET)
    for l in range(1, len(SIZES) - 1):
        M_l = torch.rand(SIZES[l + 1], SIZES[l], generator=generator, dtype=torch.float64).numpy() * np.sqrt(3) * 0.1
        M_l = M_l / np.linalg.norm(M_l, axis=0, keepdims=True)
        for step in recorder.steps:
            np.testing.assert_allclose(step["B"][l], M_l * np.sign(step["W"][l]).T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("case,wn", [("usf", True), ("frsf", False), ("brsf", True), ("kp", False), ("kp_decay", True),
                                     ("drtp", True)])
def test_the_reference_form_in_network_equals_the_numpy_rule(synthetic, tmp_path, case, wn):
    """network.backward_deltas with sign_feedback / kp_step_ on the recorded minibatches, step by step."""
    spec = _case_spec(case, wn)
    recorder, _ = _run(spec, synthetic, tmp_path)
    expected = _np_run(spec, recorder)
    net = init_network(spec.sizes, spec.init_std, seed=spec.seed, dtype=torch.float64)
    if spec.wn:
        normalize_columns_(net.W, spec.gamma)
    if spec.ibn:
        unit_columns_(net.B)
    rule, settings = spec.rule, spec.rule_settings
    if rule in ("usf", "frsf"):
        M = fixed_magnitudes(rule, settings, net, spec.init_std, spec.seed, spec.ibn)
    generator = magnitude_generator(spec.seed)
    for step, want in zip(recorder.steps, expected):
        if rule == "brsf":
            M = draw_magnitudes(spec.sizes, settings["magnitude"], spec.init_std, generator, spec.ibn, dtype=torch.float64)
        if rule in learning_rules.SIGN_RULES:
            net.B = sign_feedback(net.W, M)
        X, Y = torch.from_numpy(step["X"]), torch.from_numpy(step["Y"])
        Z, L = forward(net, X)
        delta = backward_deltas(net, Z, L, output_error(Y, L[-1]), rule, fprime=derivatives(net, Z, L), target=Y,
                                target_scale=settings.get("target_scale", 1.0))
        dW, db = weight_updates(net, L, delta)
        for l in range(net.d):
            np.testing.assert_allclose(net.W[l].numpy(), want["W"][l], rtol=0, atol=1e-12)
            np.testing.assert_allclose(dW[l].numpy(), want["dW"][l], rtol=0, atol=1e-12)
        if rule == "kp":
            kp_step_(net, dW, db, spec.eta, settings["decay"], settings["eta_feedback"])
        else:
            sgd_step_(net, dW, db, spec.eta)
        if spec.wn:
            normalize_columns_(net.W, spec.gamma)


# --------------------------------------------------------------------------------------------
# What each rule's feedback is, step by step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wn", [False, True])
def test_kp_without_decay_keeps_W_minus_Bt_at_its_initial_value(synthetic, tmp_path, wn):
    """B learns with dW^T, the update W gets: without decay (and without WN) W_l - B_l^T never changes;
    with decay lambda it shrinks by (1 - lambda) per step."""
    for decay in (0.0, 0.02):
        spec = _spec("kp", False, rule_settings={"decay": decay}, epochs=3)
        recorder, _ = _run(spec, synthetic, tmp_path / str(decay))
        first = recorder.steps[0]
        for k, step in enumerate(recorder.steps):
            for l in range(1, len(SIZES) - 1):
                np.testing.assert_allclose(step["W"][l] - step["B"][l].T, (1 - decay) ** k * (first["W"][l] - first["B"][l].T),
                                           rtol=0, atol=1e-13)
        assert not np.allclose(recorder.steps[-1]["B"][1], first["B"][1])  # B did learn


@pytest.mark.parametrize("wn", [False, True])
def test_usf_feedback_is_exactly_the_scaled_sign_of_W_at_every_step(synthetic, tmp_path, wn):
    spec = _spec("usf", wn, dtype="float32")
    recorder, _ = _run(spec, synthetic, tmp_path)
    for step in recorder.steps:
        for l in range(1, len(SIZES) - 1):
            c = np.float32(1 / np.sqrt(SIZES[l + 1])) if wn else np.float32(spec.init_std)
            assert np.array_equal(step["B"][l], c * np.sign(step["W"][l]).T)


def test_brsf_magnitudes_differ_between_minibatches_and_repeat_with_the_seed(synthetic, tmp_path):
    runs = {name: _run(_spec("brsf", False, seed=seed), synthetic, tmp_path / name)[0]
            for name, seed in (("a", 4), ("again", 4), ("other", 5))}
    steps = runs["a"].steps
    for l in range(1, len(SIZES) - 1):
        magnitudes = [np.abs(step["B"][l]) for step in steps]
        for k in range(1, len(steps)):
            assert not np.allclose(magnitudes[k], magnitudes[k - 1])
            assert (np.sign(steps[k]["B"][l]) == np.sign(steps[k]["W"][l]).T).all()
        for k, step in enumerate(runs["again"].steps):
            assert np.array_equal(step["B"][l], steps[k]["B"][l])
        assert not np.allclose(np.abs(runs["other"].steps[0]["B"][l]), magnitudes[0])


def test_the_final_weights_hold_the_feedback_in_use_at_the_end(synthetic, tmp_path):
    spec = _spec("usf", False)
    result = train_run(spec, synthetic, tmp_path / "run", log=lambda line: None)
    weights = np.load(result.files["weights"])
    for l in range(1, len(SIZES) - 1):
        np.testing.assert_array_equal(weights[f"B{l}_final"], spec.init_std * np.sign(weights[f"W{l}_final"]).T)


# --------------------------------------------------------------------------------------------
# Settings, the config and the analyses that need a fixed B
# --------------------------------------------------------------------------------------------


def test_rule_settings_are_completed_and_checked():
    assert RunSpec(rule="kp").rule_settings == {"decay": 1e-4, "eta_feedback": None}
    assert RunSpec(rule="kp", rule_settings={"decay": 0}).rule_settings == {"decay": 0.0, "eta_feedback": None}
    assert RunSpec(rule="fa").rule_settings == {}
    with pytest.raises(ValueError, match="unknown key.*'decay'"):
        RunSpec(rule="usf", rule_settings={"decay": 0.1})
    with pytest.raises(ValueError, match="decay of rule 'kp' must be a number in \\[0, 1\\)"):
        RunSpec(rule="kp", rule_settings={"decay": 1.5})
    with pytest.raises(ValueError, match="magnitude.*half_normal"):
        RunSpec(rule="brsf", rule_settings={"magnitude": "cauchy"})


def test_a_condition_overrides_its_rules_settings_and_bad_keys_name_the_condition():
    protocol = config.load_config()["conditions"]
    cfg = config.validate({"conditions": {**protocol, "kp0": {"rule": "kp", "eta": 1e-3, "rule_settings": {"decay": 0.0}},
                                          "kp": {"rule": "kp", "eta": 1e-3}},
                           "rule_settings": {"kp": {"eta_feedback": 2e-3}},
                           "experiments": {"rules": {"conditions": ["kp0", "kp"]}}})
    specs = config.run_specs(cfg)
    assert specs[("rules", "kp0", 0)]["rule_settings"] == {"decay": 0.0, "eta_feedback": 2e-3}
    assert specs[("rules", "kp", 0)]["rule_settings"] == {"decay": 1e-4, "eta_feedback": 2e-3}
    with pytest.raises(config.ConfigError, match="conditions.kp0.rule_settings.*unknown key.*'scale'"):
        config.validate({"conditions": {**protocol, "kp0": {"rule": "kp", "eta": 1e-3, "rule_settings": {"scale": 1.0}}}})


def test_rules_experiment_reuses_the_runs_main_has():
    """Off by default; configs/rules.yaml over config.yaml runs the five rules and reuses main's bp, fa, fa_wn, dfa."""
    assert not any(key[0] == "rules" for key in config.run_specs(config.load_config()))
    merged = config.load_yaml(config.DEFAULT_CONFIG_PATH)
    extra = config.load_yaml(config.REPO_ROOT / "configs" / "rules.yaml")
    merged["conditions"].update(extra["conditions"])
    merged["experiments"]["rules"] = extra["experiments"]["rules"]
    cfg = config.validate(merged)
    specs = config.run_specs(cfg)
    assert config.rules_reused(cfg) == ["bp", "fa", "dfa", "fa_wn"]
    assert ("rules", "usf", 0) in specs and ("rules", "fa", 0) not in specs and ("main", "fa", 0) in specs
    assert len([key for key in specs if key[0] == "rules"]) == 12 * 10
    assert specs[("rules", "kp_wn", 3)]["rule_settings"] == {"decay": 1e-4, "eta_feedback": None}
    merged["experiments"]["rules"] = {"conditions": ["fa", "kp"], "seeds": [0, 1]}
    other = config.validate(merged)
    assert config.rules_reused(other) == [] and ("rules", "fa", 1) in config.run_specs(other)


@pytest.mark.parametrize("rule,why", [("usf", "follows W_l"), ("frsf", "changes sign"), ("brsf", "redraws"),
                                      ("kp", "learns B_l"), ("drtp", "target"), ("dfa", "delta_d D_l")])
def test_the_analyses_that_need_a_fixed_B_refuse_the_other_rules_saying_why(rule, why):
    for section in config.MECHANISM_SECTIONS:
        with pytest.raises(config.ConfigError, match=f"'{section}.condition' is 'x'.*{why}"):
            config.validate({"conditions": {"x": {"rule": rule, "eta": 1e-3}, **config.load_config()["conditions"]},
                             section: {"condition": "x"}})


# --------------------------------------------------------------------------------------------
# Through aggregation, the summary and the figures
# --------------------------------------------------------------------------------------------


def test_rules_runs_go_through_aggregation_summary_and_figures(synthetic, tmp_path):
    from fa_analysis import aggregate, figures

    aggregated = {}
    for condition, rule, wn in (("fa", "fa", False), ("usf", "usf", False), ("kp_wn", "kp", True), ("drtp", "drtp", False)):
        runs = [train_run(_spec(rule, wn, seed=seed, experiment="rules", condition=condition), synthetic,
                          tmp_path / "runs" / condition / f"seed{seed}", log=lambda line: None).run_dir for seed in (0, 1)]
        aggregated[condition] = tmp_path / "aggregated" / condition
        aggregate.aggregate_condition(runs, aggregated[condition])
    table = aggregate.summary_table(aggregated.values(), tmp_path / "summary.csv", tmp_path / "summary.md")
    # the summary's final angle of a sign rule is to its feedback at the final state: c sign(W)^T
    weights = [np.load(tmp_path / "runs" / "usf" / f"seed{seed}" / "weights.npz") for seed in (0, 1)]
    angles = [_angle(w["W1_final"], 0.1 * np.sign(w["W1_final"])) for w in weights]
    row = table[table["condition"] == "usf"].iloc[0]
    assert row["angle_W_Bt_1_mean"] == pytest.approx(np.mean(angles), abs=1e-6)
    for name in ("rules_accuracy_loss", "rules_angle_W_Bt", "rules_update_angle"):
        paths = getattr(figures, f"plot_{name}")(aggregated, tmp_path / "figures" / name, formats=["png"])
        assert [p.suffix for p in paths] == [".png"] and paths[0].stat().st_size > 10_000
    assert figures.rules._rows(aggregated).keys() == {False, True}
