"""Sweeps (method §12): the grid's expansion into run specs, its schema errors, the sweep tables
and the sensitivity figure, on the config alone and on small synthetic run directories."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from fa_analysis import cli, figures, sweep_table, sweeps  # noqa: E402
from fa_analysis import config as fa_config  # noqa: E402
from fa_analysis.config import ConfigError, validate  # noqa: E402
from fa_analysis.figures import style  # noqa: E402
from results_synthetic import write_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIG_S3 = {
    "protocol": "label_change",
    "conditions": ["bp", "fa"],
    "overrides": {"bias": False, "ibn": False},
    "grid": {"gamma": ["none", 0.5, 1.0], "eta": [5.0e-4, 3.0e-4], "label_smoothing": [0.0, 0.05]},
    "seeds": [0, 1],
}


def with_sweep(sweep: dict, **sections) -> dict:
    return validate({"sweeps": {"s": copy.deepcopy(sweep)}, **copy.deepcopy(sections)})


def sweep_runs(config: dict) -> dict:
    return {key: spec for key, spec in fa_config.run_specs(config).items() if key[0] == "sweep"}


def raises_naming(config, *needles):
    with pytest.raises(ConfigError) as caught:
        validate(config)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)


# ---------------------------------------------------------------------------------------------
# Expansion


@pytest.mark.parametrize(("value", "label"), [
    (3.0e-4, "3e-4"), (5.0e-4, "5e-4"), (2.5e-4, "2.5e-4"), (0.25, "0.25"), (0.05, "0.05"), (1.0, "1"),
    (2.5, "2.5"), (0.0, "0"), (1000, "1000"), (None, "none"), ("none", "none"), (True, "true"),
    ([100, 100], "100-100"), ("relu", "relu"),
])
def test_value_labels_are_short_and_exact(value, label):
    assert sweeps.value_label(value) == label
    if isinstance(value, float):
        assert float(label) == value  # the label is the number itself


def test_a_grid_expands_to_every_point_with_readable_identities():
    config = with_sweep(FIG_S3)
    runs = sweep_runs(config)
    assert len(runs) == 2 * 3 * 2 * 2 * 2
    names = {condition for _, condition, _ in runs}
    # fields in the fixed order of GRID_FIELDS, whatever the config's order
    assert "s/fa/gamma~none/eta~5e-4/label_smoothing~0" in names
    assert "s/bp/gamma~0.5/eta~3e-4/label_smoothing~0.05" in names
    assert {seed for *_, seed in runs} == {0, 1}
    reordered = with_sweep({**FIG_S3, "grid": dict(reversed(list(FIG_S3["grid"].items())))})
    assert sweep_runs(reordered) == runs


def test_a_point_is_the_protocol_run_of_its_base_condition_with_the_grid_values():
    """The independent computation: the label_change experiment's own spec of the base condition,
    with the overrides and the grid's values written in by hand."""
    config = with_sweep(FIG_S3)
    protocol = fa_config.run_specs(config)
    for rule in ("bp", "fa"):
        base = protocol[("label_change", rule, 1)]
        for gamma, wn in ((None, False), (0.5, True)):
            expected = {**base, "experiment": "sweep", "condition": f"s/{rule}/gamma~{sweeps.value_label(gamma)}"
                        f"/eta~3e-4/label_smoothing~0.05", "bias": False, "ibn": False, "wn": wn, "gamma": gamma,
                        "eta": 3.0e-4, "label_smoothing": 0.05}
            assert protocol[("sweep", expected["condition"], 1)] == expected
    assert base["phases"] == [100, 100] and base["compare_rules"] is False


def test_the_network_and_batch_fields_reach_the_spec():
    config = with_sweep({"conditions": ["fa", "fa_wn"], "grid": {"width": [20], "depth": [2, 3], "batch_size": [500],
                                                                 "init_std": [0.05]}, "phases": [3]})
    runs = sweep_runs(config)
    main = fa_config.run_specs(config)[("main", "fa_wn", 0)]
    spec = runs[("sweep", "s/fa_wn/init_std~0.05/width~20/depth~3/batch_size~500", 0)]
    assert spec == {**main, "experiment": "sweep", "condition": spec["condition"], "sizes": [225, 20, 20, 20, 50],
                    "init_std": 0.05, "batch_size": 500, "epochs": 3, "phases": [3], "compare_rules": False}
    widths = with_sweep({"conditions": ["fa"], "grid": {"hidden": [[30, 10], [40]], "wn": [False, True]},
                         "overrides": {"gamma": 0.7}})
    specs = sweep_runs(widths)
    assert specs[("sweep", "s/fa/wn~true/hidden~30-10", 0)]["sizes"] == [225, 30, 10, 50]
    assert specs[("sweep", "s/fa/wn~true/hidden~30-10", 0)]["gamma"] == 0.7
    assert specs[("sweep", "s/fa/wn~false/hidden~40", 0)]["gamma"] is None


def test_adding_a_value_keeps_every_other_spec_and_removing_one_drops_only_its_runs():
    before = sweep_runs(with_sweep(FIG_S3))
    added = sweep_runs(with_sweep({**FIG_S3, "grid": {**FIG_S3["grid"], "gamma": ["none", 0.5, 0.75, 1.0]}}))
    assert {key: added[key] for key in before} == before
    assert {c.split("/")[2] for _, c, _ in set(added) - set(before)} == {"gamma~0.75"}
    removed = sweep_runs(with_sweep({**FIG_S3, "grid": {**FIG_S3["grid"], "eta": [5.0e-4]}}))
    assert set(removed) < set(before)
    assert all("eta~3e-4" in c for _, c, _ in set(before) - set(removed))
    assert {key: before[key] for key in removed} == removed


def test_no_sweep_by_default_and_the_shipped_sensitivity_config_is_the_study_grid():
    assert validate({})["sweeps"] == {}
    shipped = fa_config.load_yaml(REPO / "configs" / "sensitivity.yaml")
    config = validate({**fa_config.load_yaml(REPO / "config.yaml"), **shipped})
    sweep = config["sweeps"]["sensitivity"]
    assert sweep["protocol"] == "label_change" and sweep["conditions"] == ["bp", "fa"]
    assert sweep["grid"] == {"gamma": ["none", 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5], "eta": [5.0e-4, 3.0e-4],
                             "label_smoothing": [0.0, 0.05]}
    runs = sweep_runs(config)
    assert len(runs) == 2 * 8 * 2 * 2 * 10
    assert all(spec["phases"] == [100, 100] and not spec["bias"] and not spec["ibn"] for spec in runs.values())
    assert {spec["wn"] for key, spec in runs.items() if "gamma~none" in key[1]} == {False}
    assert sweep["last_epochs"] == 10 and sweep["figure"] == {"metric": "last_epochs_test_accuracy", "x": "gamma"}


def test_a_run_id_with_a_sweep_condition_parses():
    assert cli._run_id("sweep/s/fa/gamma~0.5/eta~3e-4/3") == ("sweep", "s/fa/gamma~0.5/eta~3e-4", 3)
    assert cli._run_id("main/fa/0") == ("main", "fa", 0)


# ---------------------------------------------------------------------------------------------
# Errors name the key, before any job


@pytest.mark.parametrize(("change", "needle"), [
    ({"grid": {"etaa": [1e-3]}}, "'sweeps.s.grid.etaa'"),
    ({"grid": {}}, "config key 'sweeps.s.grid' is empty"),
    ({"grid": {"eta": []}}, "config key 'sweeps.s.grid.eta' is empty: list at least one value"),
    ({"grid": {"bias": []}}, "config key 'sweeps.s.grid.bias' is empty: list at least one value"),
    ({"grid": {"eta": [-1e-3]}}, "config key 'sweeps.s.grid.eta.0'"),
    ({"grid": {"gamma": ["off"]}}, "config key 'sweeps.s.grid.gamma.0'"),
    ({"grid": {"gamma": [0.0]}}, "config key 'sweeps.s.grid.gamma.0'"),
    ({"grid": {"label_smoothing": [1.0]}}, "config key 'sweeps.s.grid.label_smoothing.0'"),
    ({"grid": {"hidden": [[0]]}}, "config key 'sweeps.s.grid.hidden.0.0'"),
    ({"grid": {"eta": [1e-3, 1e-3]}}, "config key 'sweeps.s.grid.eta'"),
    ({"protocol": "trajectory"}, "config key 'sweeps.s.protocol'"),
    ({"conditions": ["fa", "nope"]}, "config key 'sweeps.s.conditions' names unknown condition 'nope'"),
    ({"seeds": []}, "config key 'sweeps.s.seeds' is empty: list at least one seed"),
    ({"repeats": 3}, "'sweeps.s.repeats'"),
    ({"figure": {"x": "ibn"}}, "config key 'sweeps.s.figure.x' is 'ibn', not a field of the grid"),
    ({"grid": {"gamma": [1.0], "wn": [True]}}, "config key 'sweeps.s.grid' sweeps both gamma and wn"),
    ({"grid": {"hidden": [[10]], "depth": [2]}}, "config key 'sweeps.s.grid' sweeps hidden together"),
    ({"grid": {"wn": [True]}}, "config key 'sweeps.s.grid.wn' turns WN on for condition 'fa', which has no gamma"),
    ({"grid": {"gamma": ["none", None]}}, "config key 'sweeps.s.grid.gamma' lists no WN twice"),
    ({"grid": {"batch_size": [70000]}}, "config key 'sweeps.s.grid.batch_size' has [70000]"),
])
def test_a_bad_sweep_is_an_error_naming_the_key(change, needle):
    sweep = {"conditions": ["fa"], "grid": {"eta": [1e-3]}, **change}
    raises_naming({"sweeps": {"s": sweep}}, needle)


def test_a_depth_of_unequal_widths_names_the_key():
    raises_naming({"conditions": {"fa": {"rule": "fa", "eta": 5e-4, "hidden": [40, 20]}},
                   "experiments": {"main": {"conditions": ["fa"]}, "label_noise": {"conditions": ["fa"]},
                                   "label_change": {"conditions": ["fa"]}, "trajectory": {"conditions": ["fa"]}},
                   "sweeps": {"s": {"conditions": ["fa"], "grid": {"depth": [3]}}}},
                  "config key 'sweeps.s.grid.depth': condition 'fa' has hidden widths [40, 20]")


# ---------------------------------------------------------------------------------------------
# The tables


def test_last_epochs_accuracy_is_the_mean_after_the_change():
    # 3 + 3 epochs: rows 0..3 of phase 0, then 3..6 of phase 1 (row 3 twice: old map, new map)
    evaluation = pd.DataFrame({"epoch": [0, 1, 2, 3, 3, 4, 5, 6], "phase": [0, 0, 0, 0, 1, 1, 1, 1],
                               "test_accuracy": [.1, .5, .6, .7, .1, .3, .4, .8]})
    assert sweep_table.last_epochs_accuracy(evaluation, 6, 2) == pytest.approx((.4 + .8) / 2)
    # a window longer than the phase takes only the phase's trained epochs, never its first row
    assert sweep_table.last_epochs_accuracy(evaluation, 6, 10) == pytest.approx((.3 + .4 + .8) / 3)
    main = pd.DataFrame({"epoch": range(5), "phase": 0, "test_accuracy": [.1, .2, .3, .4, .5]})
    assert sweep_table.last_epochs_accuracy(main, 4, 3) == pytest.approx((.3 + .4 + .5) / 3)
    assert math.isnan(sweep_table.last_epochs_accuracy(main.iloc[:3], 4, 3))  # never reached its end


def synthetic_sweep(root: Path):
    """Runs of a 2 (base) x 2 (gamma) x 2 (eta) grid, 3 seeds, on disk; one diverged."""
    config = validate({"sweeps": {"s": {"protocol": "main", "conditions": ["bp", "fa"], "seeds": [0, 1, 2],
                                        "grid": {"gamma": ["none", 1.0], "eta": [5e-4, 3e-4]}, "last_epochs": 2}}})
    layout = sweeps.sweep_layout(config)["s"]
    dirs, accuracies = [], {}
    for i, (condition, point) in enumerate(layout["points"].items()):
        for seed in (0, 1, 2):
            accuracy = np.linspace(0.1, 0.5 + 0.05 * i + 0.01 * seed, 5)
            diverge = i == 1 and seed == 2
            path = write_run(root, "sweep", condition, seed, iterations=40, per_epoch=10, rule=point["rule"],
                             test_accuracy=None if diverge else accuracy, diverge_at=25 if diverge else None)
            info = json.loads((path / "run.json").read_text())
            info["spec"]["epochs"] = 4
            (path / "run.json").write_text(json.dumps(info))
            dirs.append(path)
            accuracies[(condition, seed)] = math.nan if diverge else float(accuracy[3:].mean())
    return layout, dirs, accuracies


def test_the_sweep_tables_hold_every_run_and_each_point_over_seeds(tmp_path):
    layout, dirs, accuracies = synthetic_sweep(tmp_path)
    out = tmp_path / "sweeps" / "s"
    out.mkdir(parents=True)
    sweep_table.sweep_tables(dirs[::-1], layout, "s", out / "runs.csv", out / "points.csv", out / "sweep.json", 0.1)
    runs = pd.read_csv(out / "runs.csv", dtype={"gamma": str, "eta": str})
    assert list(runs["condition"].unique()) == list(layout["points"])  # grid order, whatever the input order
    assert set(zip(runs["gamma"], runs["eta"])) == {("none", "5e-4"), ("none", "3e-4"), ("1", "5e-4"), ("1", "3e-4")}
    for row in runs.itertuples():
        assert row.last_epochs_test_accuracy == pytest.approx(accuracies[(row.condition, row.seed)], nan_ok=True)
    assert (runs["status"] == "diverged").sum() == 1
    points = sweep_table.read_points(out / "points.csv", ["gamma", "eta"])
    for condition in layout["points"]:
        values = np.array([accuracies[(condition, s)] for s in (0, 1, 2)])
        values = values[np.isfinite(values)]
        row = points[(points["condition"] == condition) & (points["measure"] == "last_epochs_test_accuracy")].iloc[0]
        assert (row["median"], row["min"], row["max"], row["mean"]) == pytest.approx(
            (np.median(values), values.min(), values.max(), values.mean()))
        assert row["sd"] == pytest.approx(values.std(ddof=1)) and row["n"] == len(values) and row["n_runs"] == 3
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["fields"] == {"gamma": ["none", "1"], "eta": ["5e-4", "3e-4"]} and meta["n_diverged"] == 1


def test_the_sensitivity_figure_draws_medians_with_min_max_bars_bp_and_fa_apart(tmp_path, monkeypatch):
    layout, dirs, accuracies = synthetic_sweep(tmp_path)
    out = tmp_path / "sweeps" / "s"
    out.mkdir(parents=True)
    sweep_table.sweep_tables(dirs, layout, "s", out / "runs.csv", out / "points.csv", out / "sweep.json", 0.1)
    drawn = {}
    save = style.save_figure
    monkeypatch.setattr(style, "save_figure", lambda fig, stem, formats: drawn.setdefault("fig", fig) and
                        save(fig, stem, formats))
    paths = figures.plot_sweep({"points": out / "points.csv", "meta": out / "sweep.json"}, tmp_path / "fig",
                               ["png"], metric="last_epochs_test_accuracy", x="gamma")
    assert paths == [tmp_path / "fig.png"] and paths[0].stat().st_size > 1000
    axes = [ax for ax in drawn["fig"].axes if ax.get_title()]
    assert [ax.get_title().splitlines()[0] for ax in axes] == ["BP (bp)", "FA (fa)"]
    assert "1 diverged runs" in axes[0].get_title()
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["none", "1"]
    for ax, base in zip(axes, ("bp", "fa")):
        lines = [line for line in ax.get_lines() if line.get_marker() in ("o", "s")]  # one per eta (not bars)
        assert len(lines) == 2
        for line, container, eta in zip(lines, ax.containers, ("5e-4", "3e-4")):
            expected, bars = [], []
            for gamma in ("none", "1"):
                condition = f"s/{base}/gamma~{gamma}/eta~{eta}"
                values = [v for s in (0, 1, 2) if np.isfinite(v := accuracies[(condition, s)])]
                expected.append(100 * np.median(values))
                bars.append((100 * min(values), 100 * max(values)))
            np.testing.assert_allclose(line.get_ydata(), expected)
            segments = container.lines[2][0].get_segments()
            np.testing.assert_allclose([(low, high) for (_, low), (_, high) in segments], bars)
    legend = [t.get_text() for t in drawn["fig"].legends[0].get_texts()]
    assert legend == ["η = 5e-4", "η = 3e-4"]


def test_the_readme_example_is_a_valid_sweep():
    text = (REPO / "README.md").read_text()
    section = text.split("## Sweeps: grids of conditions", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = validate(yaml.load(block, Loader=fa_config.ConfigLoader))
    runs = sweep_runs(config)
    assert len(runs) == 2 * 3 * 2 * 2 * 3
    assert ("sweep", "fig_s3/fa/gamma~0.5/eta~3e-4/label_smoothing~0.05", 0) in runs
