"""Figures of method §9 from small synthetic aggregates: bands, moving average, valid files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from fa_analysis import aggregate, cli, figures  # noqa: E402
from results_synthetic import write_remainder_table, write_run, write_shadow_table, write_terms_tables  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_band_is_mean_plus_minus_sd():
    x = np.arange(6.0)
    mean = np.array([90.0, 80, 75, 70, 66, 60])
    sd = np.array([1.0, 2, 3, 2, 1, 0.5])
    fig, ax = plt.subplots()
    line, band = figures.plot_mean_sd(ax, x, mean, sd, color="C0")
    np.testing.assert_allclose(line.get_ydata(), mean)
    vertices = band.get_paths()[0].vertices
    upper = {(vx, vy) for vx, vy in vertices if np.isclose(vy, mean[int(round(vx))] + sd[int(round(vx))])}
    lower = {(vx, vy) for vx, vy in vertices if np.isclose(vy, mean[int(round(vx))] - sd[int(round(vx))])}
    assert {vx for vx, _ in upper} == set(x) and {vx for vx, _ in lower} == set(x)
    assert np.allclose(vertices[:, 1].max(), (mean + sd).max()) and np.allclose(vertices[:, 1].min(), (mean - sd).min())
    plt.close(fig)


def test_moving_average_is_causal_and_averages_what_exists():
    step = np.zeros(200)
    step[100:] = 1.0
    smoothed = figures.causal_moving_average(step, 60)
    assert np.all(smoothed[:100] == 0.0)  # nothing before the step sees it
    assert smoothed[100] == pytest.approx(1 / 60)
    assert smoothed[159] == pytest.approx(1.0)
    x = np.array([3.0, 5.0, 10.0, 2.0])
    np.testing.assert_allclose(figures.causal_moving_average(x, 3), [3.0, 4.0, 6.0, 17 / 3])


def test_moving_average_skips_non_finite_values():
    x = np.array([1.0, np.nan, 3.0, np.inf])
    np.testing.assert_allclose(figures.causal_moving_average(x, 2), [1.0, 1.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="moving_average"):
        figures.causal_moving_average(x, 0)


def test_every_condition_has_one_colour():
    colours = list(figures.PALETTE.values())
    assert len(set(colours)) == len(colours)
    assert set(figures.PALETTE) == {"bp", "bp_wn", "fa", "fa_wn", "fa_wn_noibn"}


# ---------------------------------------------------------------------------------------------
# Every figure writes a valid PNG and PDF
# ---------------------------------------------------------------------------------------------


def _assert_files(paths):
    png, pdf = sorted(paths, key=lambda p: p.suffix != ".png")
    assert png.read_bytes()[:8] == PNG_MAGIC and 10_000 < png.stat().st_size < 3_000_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and 5_000 < pdf.stat().st_size < 3_000_000


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    """Aggregated dirs for main/{bp,bp_wn,fa,fa_wn} (3 seeds, one fa seed diverges) and label change."""
    root = tmp_path_factory.mktemp("results")
    dirs = {}
    for condition in ("bp", "bp_wn", "fa", "fa_wn"):
        runs = [write_run(root, "main", condition, seed, iterations=120, diverge_at=80 if (condition, seed) == ("fa", 2) else None)
                for seed in range(3)]
        dirs[condition] = root / "aggregated" / "main" / condition
        aggregate.aggregate_condition(runs, dirs[condition])
    change = {}
    for condition in ("bp", "fa"):
        runs = [write_run(root, "label_change", condition, seed, iterations=120, phases=[6, 6]) for seed in range(2)]
        change[condition] = root / "aggregated" / "label_change" / condition
        aggregate.aggregate_condition(runs, change[condition])
    noise = {}
    for condition in ("fa", "fa_wn"):
        for level in (0, 50, 100):
            runs = [write_run(root, "label_noise", f"{condition}_p{level}", seed) for seed in range(3)]
            noise[f"{condition}_p{level}"] = root / "aggregated" / "label_noise" / f"{condition}_p{level}"
            aggregate.aggregate_condition(runs, noise[f"{condition}_p{level}"])
    terms = {}
    for variant in ("fixed", "reshuffle", "wrong_labels"):
        runs = [write_run(root, "terms", f"fa_{variant}", seed) for seed in range(3)]
        for seed, run_dir in enumerate(runs):
            write_terms_tables(run_dir, seed, lags=(1, 10, 20))  # lag 20 > max_lag: over time only
        terms[variant] = root / "aggregated" / "terms" / f"fa_{variant}"
        aggregate.aggregate_condition(runs, terms[variant])
    runs = [write_run(root, "shadow", "fa", seed) for seed in range(3)]
    for seed, run_dir in enumerate(runs):
        write_shadow_table(run_dir, seed)
    shadow = root / "aggregated" / "shadow" / "fa"
    aggregate.aggregate_condition(runs, shadow)
    runs = [write_run(root, "remainder", "fa", seed) for seed in range(3)]
    for seed, run_dir in enumerate(runs):
        write_remainder_table(run_dir, seed)
    remainder = root / "aggregated" / "remainder" / "fa"
    aggregate.aggregate_condition(runs, remainder)
    return {"main": dirs, "label_change": change, "label_noise": noise, "terms": terms, "shadow": shadow,
            "remainder": remainder, "root": root}


def test_main_figures_write_png_and_pdf(aggregated, tmp_path):
    main = aggregated["main"]
    _assert_files(figures.plot_angle_W_Bt(main, tmp_path / "angle_W_Bt"))
    _assert_files(figures.plot_accuracy_loss(main, tmp_path / "accuracy_loss"))
    _assert_files(figures.plot_update_angle(main, tmp_path / "update_angle", window=10))


def test_label_figures_write_png_and_pdf(aggregated, tmp_path):
    _assert_files(figures.plot_label_change(aggregated["label_change"], tmp_path / "label_change"))
    noise = aggregated["label_noise"]
    _assert_files(figures.plot_label_noise({"fa": {p: noise[f"fa_p{p}"] for p in (0, 50, 100)}}, tmp_path / "label_noise"))


def test_alignment_terms_figures_write_png_and_pdf(aggregated, tmp_path):
    _assert_files(figures.plot_alignment_terms_lag(aggregated["terms"], tmp_path / "alignment_terms_lag"))
    _assert_files(figures.plot_alignment_terms_time(aggregated["terms"], tmp_path / "alignment_terms_time"))


def test_shadow_figures_write_png_and_pdf(aggregated, tmp_path):
    _assert_files(figures.plot_shadow_linearised(aggregated["shadow"], tmp_path / "shadow_linearised"))
    _assert_files(figures.plot_shadow_random_b(aggregated["shadow"], tmp_path / "shadow_random_b"))


def test_remainder_and_similarity_figures_write_png_and_pdf(aggregated, tmp_path):
    _assert_files(figures.plot_remainder(aggregated["remainder"], tmp_path / "remainder"))
    _assert_files(figures.plot_similarity(aggregated["terms"], tmp_path / "similarity"))


def test_similarity_figure_draws_the_lag_analysis_only(aggregated, tmp_path, monkeypatch):
    """Rows variant x k of the lag analysis, one line per (labels, within/between), lags 1..max_lag."""
    captured = {}
    monkeypatch.setattr(figures.style, "save_figure", lambda fig, stem, formats: captured.setdefault("fig", fig))
    figures.plot_similarity(aggregated["terms"], tmp_path / "similarity")
    axes = [ax for ax in captured["fig"].axes if ax.lines]
    assert len(axes) == 3 * 2 * 2  # variants x k (6, 30) x layers
    for ax in axes:
        lines = [line for line in ax.lines if line.get_label() and not line.get_label().startswith("_")]
        assert len(lines) == 4
        k = int(ax.get_title().split("k = ")[1].split(",")[0])
        assert max(max(line.get_xdata()) for line in lines) == min(12, k)  # not the over-time lag 10 beyond
    plt.close(captured["fig"])


def test_open_loop_figures_write_png_and_pdf(tmp_path):
    rng = np.random.default_rng(0)
    scenarios = {}
    for scenario in ("auto", "cross", "both", "none"):
        reps, its = np.meshgrid(np.arange(3), np.arange(101), indexing="ij")
        angle = 90 - (0 if scenario == "none" else 30) * (1 - np.exp(-its / 30)) + rng.normal(0, 2, its.shape)
        pd.DataFrame({"repetition": reps.ravel(), "iteration": its.ravel(), "angle": angle.ravel()}).to_parquet(
            tmp_path / f"{scenario}.parquet")
        scenarios[scenario] = tmp_path / f"{scenario}.parquet"
    _assert_files(figures.plot_open_loop(scenarios, tmp_path / "open_loop"))
    sweeps = {}
    for wn in (False, True):
        frames = []
        for beta in (0.0, 0.5, 1.0):
            reps, its = np.meshgrid(np.arange(3), np.arange(51), indexing="ij")
            angle = 90 - 40 * beta * (1 - np.exp(-its / 20)) + rng.normal(0, 2, its.shape)
            frames.append(pd.DataFrame({"beta": beta, "repetition": reps.ravel(), "iteration": its.ravel(),
                                        "angle": angle.ravel()}))
        sweeps[wn] = tmp_path / f"beta_wn{int(wn)}.parquet"
        pd.concat(frames).to_parquet(sweeps[wn])
    _assert_files(figures.plot_open_loop_beta(sweeps, tmp_path / "open_loop_beta"))


def test_angle_figure_draws_the_aggregated_mean_and_sd(aggregated, tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr(figures.style, "save_figure", lambda fig, stem, formats: captured.setdefault("fig", fig))
    figures.plot_angle_W_Bt({"fa": aggregated["main"]["fa"]}, tmp_path / "angle")
    ax = captured["fig"].axes[1]  # the panel of W_2
    table = pd.read_parquet(aggregated["main"]["fa"] / "metrics.parquet")
    curve = table[table.measure == "angle_W_Bt_2"].sort_values("iteration")
    line = next(l for l in ax.get_lines() if l.get_label() == "FA (1 of 3 runs diverged)")
    np.testing.assert_allclose(line.get_xdata(), curve["iteration"])
    np.testing.assert_allclose(line.get_ydata(), curve["mean"])
    vertices = ax.collections[0].get_paths()[0].vertices
    assert vertices[:, 1].max() == pytest.approx((curve["mean"] + curve["sd"]).max())
    assert vertices[:, 1].min() == pytest.approx((curve["mean"] - curve["sd"]).min())
    plt.close(captured["fig"])


def test_a_condition_the_config_adds_gets_a_stable_colour_of_its_own(aggregated, tmp_path, monkeypatch):
    names = ["mystery", "fa_half_eta", "dfa", "fa_copy"]
    colours = [figures.style.condition_color(name) for name in names]
    assert colours == [figures.style.condition_color(name) for name in names]  # the same every time
    assert not set(colours) & set(figures.PALETTE.values())  # never a protocol condition's colour
    assert set(colours) <= set(figures.EXTRA_COLORS)
    settings = tmp_path / "fa_half_eta"
    settings.mkdir()
    (settings / "aggregate.json").write_text(json.dumps({"settings": {"rule": "fa", "eta": 2.5e-4, "wn": True,
                                                                      "gamma": 0.8, "ibn": False}}))
    assert figures.style.condition_label("fa_half_eta", settings) == "fa_half_eta: FA, η = 0.00025, WN (γ = 0.8)"
    assert figures.style.condition_label("fa_wn", settings) == figures.CONDITION_LABELS["fa_wn"]
    assert figures.style.condition_label("mystery", tmp_path / "nowhere") == "mystery"
    captured = _captured(monkeypatch)
    figures.plot_angle_W_Bt({"fa": aggregated["main"]["fa"], "mystery": aggregated["main"]["bp"]}, tmp_path / "x")
    legend = {text.get_text() for text in captured["fig"].legends[0].get_texts()}
    assert any(label.startswith("mystery") for label in legend), legend
    plt.close(captured["fig"])


def test_the_protocols_conditions_are_labelled_by_their_plain_names(tmp_path):
    """Every condition of the protocol's main experiment (method §5.1), dfa included, reads as its
    usual name, whatever settings its aggregate records."""
    from fa_analysis import config as fa_config

    expected = {"bp": "BP", "bp_wn": "BP + WN", "fa": "FA", "fa_wn": "FA + WN (IBN)",
                "fa_wn_noibn": "FA + WN, no IBN", "dfa": "DFA"}
    assert set(fa_config.load_config()["experiments"]["main"]["conditions"]) == set(expected)
    directory = tmp_path / "dfa"
    directory.mkdir()
    (directory / "aggregate.json").write_text(json.dumps({"settings": {"rule": "dfa", "eta": 5e-4, "wn": False}}))
    for condition, label in expected.items():
        assert figures.style.condition_label(condition, directory) == label
        assert figures.style.condition_label(condition) == label


def test_accuracy_loss_zooms_on_the_last_epochs_and_draws_the_loss_on_a_log_scale(tmp_path, monkeypatch):
    """Conditions that end a few points apart near the top of the 0-100 % axis: a panel shows the
    last fifth of the epochs (16-20 of 20) scaled to their mean ± sd there; the loss axis is logarithmic."""
    epochs, tops = 20, {"bp": 0.96, "fa": 0.90, "dfa": 0.86}
    rise = 1 - np.exp(-np.arange(epochs + 1) / 3.0)
    accuracy = {condition: [0.1 + (top - 0.1 + 0.01 * seed) * rise for seed in range(3)] for condition, top in tops.items()}
    directories = {}
    for condition, per_seed in accuracy.items():
        runs = [write_run(tmp_path, "main", condition, seed, iterations=10 * epochs, test_accuracy=per_seed[seed])
                for seed in range(3)]
        directories[condition] = tmp_path / "aggregated" / "main" / condition
        aggregate.aggregate_condition(runs, directories[condition])
    captured = _captured(monkeypatch)
    figures.plot_accuracy_loss(directories, tmp_path / "accuracy_loss")
    fig = captured["fig"]
    ax_accuracy, ax_zoom, ax_loss = fig.axes[:3]
    assert ax_loss.get_yscale() == "log" and ax_accuracy.get_yscale() == "linear"
    assert ax_zoom.get_xlim() == (16.0, 20.0)
    # mean ± sample sd over the seeds of epochs 16..20, in percent, computed here from the runs' values
    last = np.stack([100 * np.asarray(per_seed)[:, 16:] for per_seed in accuracy.values()])  # condition, seed, epoch
    mean, sd = last.mean(axis=1), last.std(axis=1, ddof=1)
    low, high = (mean - sd).min(), (mean + sd).max()
    y0, y1 = ax_zoom.get_ylim()
    assert y0 < low and high < y1  # every band in view ...
    assert (y1 - y0) < 1.2 * (high - low) + 0.5 and y0 > 70  # ... and little else, far from the full axis
    for condition, per_seed in accuracy.items():  # the zoom draws the same mean curves
        line = next(l for l in ax_zoom.get_lines() if l.get_color() == figures.style.condition_color(condition))
        np.testing.assert_allclose(line.get_ydata(), 100 * np.mean(per_seed, axis=0))
    legend = {text.get_text() for text in fig.legends[0].get_texts()}
    assert legend == {"BP", "FA", "DFA"}
    plt.close(fig)


def test_missing_aggregate_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.parquet"):
        figures.plot_angle_W_Bt({"fa": tmp_path / "nowhere"}, tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# Label noise: every condition, one colour each
# ---------------------------------------------------------------------------------------------


def _captured(monkeypatch) -> dict:
    """Keep the figure a plot function would save (and save nothing)."""
    captured = {}
    monkeypatch.setattr(figures.style, "save_figure", lambda fig, stem, formats: captured.setdefault("fig", fig))
    return captured


def _texts(fig) -> str:
    """Every text of a figure: titles, legends, notes."""
    return "\n".join(text.get_text() for text in fig.findobj(matplotlib.text.Text))


# The label-noise figure's group keys as the workflow passes them (figures.smk, FIGURE_GROUPS)
NOISE_GROUPS = {f"{condition}_p{level}": [condition, level] for condition in ("fa", "fa_wn") for level in (0, 50, 100)}


def test_label_noise_figure_shows_every_condition_in_its_colour(aggregated, tmp_path, monkeypatch):
    """The workflow's inputs are the run names, with each one's condition and level beside them."""
    captured = _captured(monkeypatch)
    cli.figure_job("label_noise", {name: str(path) for name, path in aggregated["label_noise"].items()},
                   [str(tmp_path / "label_noise.png")], {}, NOISE_GROUPS)
    fig = captured["fig"]
    legend = {text.get_text() for text in fig.legends[0].get_texts()}
    assert legend == {"FA", "FA + WN (IBN)"}
    accuracy = fig.axes[0]
    for condition in ("fa", "fa_wn"):
        drawn = [line for line in accuracy.get_lines()  # the line through the means, not the error-bar caps
                 if line.get_color() == figures.PALETTE[condition] and line.get_linestyle() != "None"]
        assert len(drawn) == 1 and list(drawn[0].get_xdata()) == [0, 50, 100]
        runs = pd.read_csv(aggregated["label_noise"][f"{condition}_p50"] / "runs.csv")
        assert drawn[0].get_ydata()[1] == pytest.approx(100 * runs["final_test_accuracy"].mean())
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Conditions whose runs all diverged: drawn as such, never a crash
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, mnist_root):
    """The fa runs of the smoke config at eta = 1e30, every one diverging in its first epoch,
    aggregated as the workflow does, keyed as the figure rules name their inputs."""
    import torch

    from fa_analysis import config as fa_config
    from fa_analysis import data

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("diverged")
    config = fa_config.load_config(fa_config.REPO_ROOT / "tests" / "smoke" / "config.yaml")
    config["conditions"]["fa"]["eta"] = 1e30
    dataset = data.prepare_dataset(mnist_root, download=False, out_path=root / "mnist15.npz",
                                   train_subset=config["data"]["train_subset"], test_subset=config["data"]["test_subset"])
    labels = data.prepare_label_noise(dataset, 100, 2021, root / "labels_noise100.npz")
    wanted = {"main": ("fa",), "label_noise": ("fa_p0", "fa_p100"), "shadow": ("fa",),
              "terms": ("fa_fixed", "fa_reshuffle", "fa_wrong_labels"), "remainder": ("fa",)}
    inputs = {experiment: {} for experiment in wanted}
    for experiment, conditions in wanted.items():
        for condition in conditions:
            runs = []
            for seed in (0, 1):
                spec = fa_config.run_specs(config)[(experiment, condition, seed)]
                runs.append(root / "runs" / experiment / condition / f"seed{seed}")
                cli.train_job(spec, 1, str(dataset), str(labels) if spec["label_noise"] else None, str(runs[-1]))
                assert json.loads((runs[-1] / "run.json").read_text())["status"] == "diverged"
            inputs[experiment][condition] = str(root / "aggregated" / experiment / condition)
            aggregate.aggregate_condition(runs, inputs[experiment][condition])
    return inputs


@pytest.mark.parametrize("name", ["angle_W_Bt", "accuracy_loss", "update_angle", "label_noise",
                                  "alignment_terms_lag", "alignment_terms_time", "shadow_linearised",
                                  "shadow_random_b", "similarity", "remainder"])
def test_a_condition_whose_runs_all_diverged_is_drawn_as_such(diverged, tmp_path, monkeypatch, name):
    inputs = {"label_noise": diverged["label_noise"], "shadow_linearised": {"shadow": diverged["shadow"]["fa"]},
              "shadow_random_b": {"shadow": diverged["shadow"]["fa"]},
              "remainder": {"remainder": diverged["remainder"]["fa"]}}.get(name)
    if inputs is None:
        inputs = diverged["terms"] if name.startswith("alignment_terms") or name == "similarity" else diverged["main"]
    options = {"window": 5} if name in ("update_angle", "alignment_terms_time") else {}
    captured = _captured(monkeypatch)
    cli.figure_job(name, inputs, [str(tmp_path / f"{name}.png")], options, NOISE_GROUPS)
    assert re.search(r"all (2 )?runs diverged", _texts(captured["fig"]))
    plt.close(captured["fig"])


def test_grouped_figures_take_their_groups_from_the_workflow_not_from_names(aggregated, tmp_path):
    inputs = {name: str(path) for name, path in aggregated["label_noise"].items()}
    with pytest.raises(ValueError, match=r"no group keys for the input\(s\) \['fa_p100', 'fa_p50', 'fa_wn_p0'"):
        cli.figure_job("label_noise", inputs, [str(tmp_path / "x.png")], {}, {"fa_p0": ["fa", 0]})
    # a name is only a name: the groups say what it stands for
    grouped = figures.figure_inputs("label_noise", {"run_a": "a", "run_b": "b"}, {"run_a": ["fa", 20], "run_b": ["fa", 40]})
    assert grouped == {"fa": {20: "a", 40: "b"}}
    assert figures.figure_inputs("open_loop_beta", {"x": "p", "y": "q"}, {"x": [False], "y": [True]}) == {False: "p", True: "q"}


def test_diverged_figures_are_written(diverged, tmp_path):
    """The same figures, saved: a valid PNG and PDF each."""
    for name, inputs in (("label_noise", diverged["label_noise"]), ("alignment_terms_lag", diverged["terms"])):
        outputs = [str(tmp_path / f"{name}.{fmt}") for fmt in ("png", "pdf")]
        cli.figure_job(name, inputs, outputs, {}, NOISE_GROUPS)
        png, pdf = (Path(path) for path in outputs)
        assert png.read_bytes()[:8] == PNG_MAGIC and pdf.read_bytes()[:5] == b"%PDF-"


# ---------------------------------------------------------------------------------------------
# A figure's log
# ---------------------------------------------------------------------------------------------


def test_figure_log_holds_no_third_party_chatter(aggregated, tmp_path):
    """Saving a PDF makes fontTools log every font subset at INFO; the job log keeps the package's lines."""
    log = tmp_path / "accuracy_loss.log"
    outputs = [str(tmp_path / "accuracy_loss.png"), str(tmp_path / "accuracy_loss.pdf")]
    level = logging.getLogger().level
    with cli.job_log(log):
        cli.figure_job("accuracy_loss", {c: str(d) for c, d in aggregated["main"].items()}, outputs, {})
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "INFO drew" in lines[0], lines[:5]
    assert logging.getLogger().level == level  # the job log leaves the root logger as it was
