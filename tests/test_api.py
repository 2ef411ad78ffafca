"""The Python API (fa_analysis.api) and the one-off ``fa-analysis train``: README example, equivalence
with the workflow's training job, tidy tables of a results folder, errors that name the fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fa_analysis
from fa_analysis import aggregate, cli, data
from fa_analysis import config as fa_config
from fa_analysis.api import load_results, load_run, train_one
from results_synthetic import SIZES, write_run, write_shadow_table

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "tests" / "smoke" / "config.yaml"
ITERATIONS = 40


# ---------------------------------------------------------------------------------------------
# A small results folder: synthetic run directories, aggregated and summarised by the package


def make_results(root: Path) -> dict[tuple[str, str], list[Path]]:
    """``runs/``, ``aggregated/`` and ``tables/summary.*`` as the workflow lays them out."""
    layout = {("main", "fa"): [0, 1, 2], ("main", "fa_wn"): [0, 1], ("shadow", "fa"): [0, 1]}
    runs = {}
    for (experiment, condition), seeds in layout.items():
        runs[experiment, condition] = []
        for seed in seeds:
            diverge_at = 25 if (condition, seed) == ("fa", 2) else None
            run_dir = write_run(root, experiment, condition, seed, iterations=ITERATIONS, diverge_at=diverge_at)
            if experiment == "shadow":
                write_shadow_table(run_dir, seed, iterations=ITERATIONS)
            runs[experiment, condition].append(run_dir)
    aggregated = []
    for (experiment, condition), run_dirs in runs.items():
        out = root / "aggregated" / experiment / condition
        aggregate.aggregate_condition(run_dirs, out)
        aggregated.append(out)
    aggregate.summary_table(aggregated, root / "tables" / "summary.csv", root / "tables" / "summary.md")
    return runs


@pytest.fixture
def results_dir(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "results"
    return root, make_results(root)


# ---------------------------------------------------------------------------------------------
# The README's example, exactly as written


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## From Python\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## From Python' section"
    return re.findall(r"```python\n(.*?)```", section.group(1), flags=re.DOTALL)


def test_readme_example_runs_as_written(results_dir, mnist_root, one_torch_thread, monkeypatch):
    """The README's "From Python" code, against a results folder and a real (small) training run."""
    root, runs = results_dir
    blocks = readme_python_blocks()
    code = "\n".join(blocks)
    assert blocks and "load_results(" in code and "train_one(" in code
    monkeypatch.chdir(root.parent)  # the example names "results" and "data" relative to the working directory
    (root.parent / "data").symlink_to(mnist_root)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)

    angles = namespace["angles"]
    assert list(angles.columns[:5]) == ["experiment", "condition", "seed", "iteration", "epoch"]
    assert set(angles.columns[5:]) == {"angle_W_Bt_all", *(f"angle_W_Bt_{l}" for l in range(1, len(SIZES) - 1))}
    assert set(angles["experiment"]) == {"main"}
    expected_rows = sum(len(pd.read_parquet(p / "metrics.parquet")) for p in runs["main", "fa"] + runs["main", "fa_wn"])
    assert len(angles) == expected_rows
    means = namespace["means"]
    assert set(means["condition"]) == {"fa", "fa_wn"} and set(means["measure"]) == set(angles.columns[5:])
    assert namespace["summary"].equals(pd.read_csv(root / "tables" / "summary.csv"))
    run = namespace["run"]
    assert run.status == "completed" and run.run_dir is None
    assert len(run.metrics) == 5 * 5  # 5 epochs of 5,000 images in minibatches of 1,000
    assert run.spec["seed"] == 3 and run.spec["condition"] == "fa" and run.spec["rule"] == "fa"


# ---------------------------------------------------------------------------------------------
# load_results


def test_runs_table_has_one_row_per_run_with_status_and_final_values(results_dir):
    root, runs = results_dir
    table = load_results(root).runs
    assert list(table[["experiment", "condition", "seed"]].itertuples(index=False, name=None)) == [
        ("main", "fa", 0), ("main", "fa", 1), ("main", "fa", 2), ("main", "fa_wn", 0), ("main", "fa_wn", 1),
        ("shadow", "fa", 0), ("shadow", "fa", 1),
    ]
    diverged = table[table["status"] == "diverged"]
    assert list(diverged["seed"]) == [2] and list(diverged["divergence_iteration"]) == [25]
    # the same rows as the workflow's runs.csv of each condition
    expected = pd.read_csv(root / "aggregated" / "main" / "fa" / "runs.csv")
    mine = table[(table["experiment"] == "main") & (table["condition"] == "fa")].reset_index(drop=True)
    np.testing.assert_allclose(mine["final_test_accuracy"], expected["final_test_accuracy"])
    np.testing.assert_allclose(mine["angle_W_Bt_1"], expected["angle_W_Bt_1"])


def test_runs_table_falls_back_to_runs_csv_without_run_directories(results_dir):
    root, _ = results_dir
    with_runs = load_results(root).runs
    for run_json in root.glob("runs/*/*/seed*/run.json"):
        run_json.unlink()
    from_csv = load_results(root).runs
    assert len(from_csv) == len(with_runs)
    np.testing.assert_allclose(from_csv["final_test_accuracy"], with_runs["final_test_accuracy"])


def test_metrics_carry_the_run_identity_and_select_runs_and_columns(results_dir):
    root, runs = results_dir
    results = load_results(root)
    table = results.metrics("main", "fa", seed=[0, 2], columns=["loss", "angle_W_Bt_1"])
    assert list(table.columns) == ["experiment", "condition", "seed", "iteration", "epoch", "loss", "angle_W_Bt_1"]
    for seed in (0, 2):
        own = pd.read_parquet(runs["main", "fa"][seed] / "metrics.parquet")
        rows = table[table["seed"] == seed].reset_index(drop=True)
        pd.testing.assert_series_equal(rows["angle_W_Bt_1"], own["angle_W_Bt_1"], check_names=False)
    assert len(table[table["seed"] == 2]) == 26  # the diverged run stops at its divergence
    everything = results.metrics()
    assert set(everything["experiment"]) == {"main", "shadow"} and len(everything) == 6 * ITERATIONS + 26
    assert set(results.metrics(condition="fa*")["condition"]) == {"fa", "fa_wn"}

    long = results.metrics("main", "fa_wn", columns="angle_W_Bt_*", long=True)
    assert list(long.columns) == ["experiment", "condition", "seed", "iteration", "epoch", "measure", "value"]
    assert len(long) == 2 * ITERATIONS * 3  # seeds x iterations x (angle_W_Bt_1, _2, _all)


def test_evaluation_observer_tables_and_aggregated_means(results_dir):
    root, runs = results_dir
    results = load_results(root)
    evaluation = results.evaluation("main")
    assert {"experiment", "condition", "seed", "test_accuracy"} <= set(evaluation.columns)
    assert len(evaluation) == sum(len(pd.read_parquet(p / "evaluation.parquet"))
                                  for p in runs["main", "fa"] + runs["main", "fa_wn"])

    shadow = results.table("shadow")
    assert set(shadow["experiment"]) == {"shadow"} and "angle_Wlin_Bt" in shadow.columns
    assert len(shadow) == 2 * ITERATIONS * 2  # seeds x iterations x layers

    means = results.aggregated("metrics", "main", measures=["angle_W_Bt_1"])
    own = pd.read_parquet(root / "aggregated" / "main" / "fa_wn" / "metrics.parquet")
    own = own[own["measure"] == "angle_W_Bt_1"].reset_index(drop=True)
    mine = means[means["condition"] == "fa_wn"].reset_index(drop=True)
    assert list(mine.columns) == ["experiment", "condition", "iteration", "epoch", "measure", "mean", "sd", "n"]
    pd.testing.assert_series_equal(mine["mean"], own["mean"])
    assert set(results.aggregated("shadow")["measure"]) >= {"angle_Wlin_Bt", "angle_WBprime_Bprimet"}
    assert results.experiments == {"main": {"fa": [0, 1, 2], "fa_wn": [0, 1]}, "shadow": {"fa": [0, 1]}}


def test_missing_tables_are_errors_naming_what_is_there(results_dir, tmp_path):
    root, _ = results_dir
    results = load_results(root)
    with pytest.raises(LookupError, match=r"no metrics.parquet under runs/ for experiment='terms'.*main: fa, fa_wn"):
        results.metrics("terms")
    with pytest.raises(KeyError, match="no column .* matches"):
        results.metrics("main", columns="angle_nothing_*")
    with pytest.raises(LookupError, match="open_loop"):
        results.open_loop()
    (root / "tables" / "summary.csv").unlink()
    with pytest.raises(FileNotFoundError, match="summary"):
        results.summary
    with pytest.raises(FileNotFoundError, match="no results folder"):
        load_results(tmp_path / "nowhere")


def test_staging_directories_of_running_jobs_are_ignored(results_dir):
    root, runs = results_dir
    staging = root / "runs" / "main" / "fa" / ".seed7.tmp-123-abcdef01"
    staging.mkdir()
    (staging / "run.json").write_text("{}")
    assert load_results(root).experiments["main"]["fa"] == [0, 1, 2]


def test_open_loop_tables_carry_their_scenario_and_wn(tmp_path):
    from fa_analysis import open_loop

    settings = {"sizes": [4, 6, 4], "batch_size": 5, "eta": 0.01, "iterations": 3, "repetitions": 2,
                "init_std": 1.0, "seed": 7, "beta_sweep": {"betas": [0.0, 1.0], "gamma": 1.0}}
    for scenario in ("auto", "none"):
        open_loop.open_loop_job(settings, scenario, tmp_path / "open_loop" / f"{scenario}.parquet")
    for wn in (False, True):
        open_loop.beta_sweep_job(settings, wn, tmp_path / "open_loop" / f"beta_wn{int(wn)}.parquet")
    results = load_results(tmp_path)
    scenarios = results.open_loop()
    assert list(scenarios.columns) == ["scenario", "repetition", "iteration", "angle"]
    assert sorted(set(scenarios["scenario"])) == ["auto", "none"] and len(scenarios) == 2 * 2 * 4
    sweep = results.beta_sweep()
    assert list(sweep.columns[:2]) == ["wn", "beta"] and set(sweep["wn"]) == {False, True}


# ---------------------------------------------------------------------------------------------
# train_one: the workflow's training job, in memory


@pytest.fixture(scope="module")
def smoke_data(mnist_root, tmp_path_factory):
    """The data stage's prepared set and noisy labels for the smoke config (3,000 / 500 images)."""
    smoke = fa_config.load_config(SMOKE_CONFIG)
    folder = tmp_path_factory.mktemp("smoke_data")
    settings = {key: smoke["data"][key] for key in ("image_size", "train_subset", "test_subset")}
    prepared = data.prepare_dataset(mnist_root, False, folder / "mnist15.npz", **settings)
    labels = data.prepare_label_noise(prepared, 100, smoke["data"]["label_noise_seed"], folder / "labels_noise100.npz")
    return smoke, prepared, labels


@pytest.mark.parametrize("experiment, condition, epochs", [
    ("main", "fa", None),
    ("label_noise", "fa_p100", 1),
    ("terms", "fa_fixed", 1),
])
def test_train_one_is_the_workflow_training_job(smoke_data, mnist_root, tmp_path, one_torch_thread,
                                               experiment, condition, epochs):
    """The same run spec, data, noisy labels and observers as the workflow's job: identical tables."""
    smoke, prepared, labels = smoke_data
    spec = dict(fa_config.run_specs(smoke)[experiment, condition, 1])
    if epochs is not None:
        spec.update(epochs=epochs, phases=[epochs])
    job_dir = tmp_path / "job"
    cli.train_job(spec, 1, str(prepared), str(labels) if spec["label_noise"] else None, str(job_dir))
    job = load_run(job_dir)

    run = train_one(SMOKE_CONFIG, experiment=experiment, condition=condition, seed=1, epochs=epochs,
                    mnist_root=mnist_root, log=None)
    assert run.spec == job.spec
    pd.testing.assert_frame_equal(run.metrics, job.metrics)
    pd.testing.assert_frame_equal(run.evaluation, job.evaluation)
    assert sorted(run.tables) == sorted(job.tables) == (
        ["terms_lag", "terms_similarity", "terms_time"] if experiment == "terms" else [])
    for name in run.tables:
        pd.testing.assert_frame_equal(run.tables[name], job.tables[name])
    np.testing.assert_array_equal(run.weights["W2_final"], job.weights["W2_final"])
    assert run.record["final_test_accuracy"] == job.record["final_test_accuracy"]


def test_train_one_writes_a_run_directory_only_when_asked(smoke_data, tmp_path, one_torch_thread, monkeypatch):
    _, prepared, _ = smoke_data
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    lines: list[str] = []
    run = train_one(condition="fa_wn", seed=2, epochs=2, dataset=prepared, batch_size=300, log=lines.append)
    assert run.run_dir is None and run.record["run_dir"] is None
    assert list((tmp_path / "scratch").iterdir()) == []  # nothing left behind
    assert run.spec["wn"] and run.spec["gamma"] == 1.0 and run.spec["batch_size"] == 300
    assert len(run.metrics) == 2 * 10 and run.weights["W0_final"].shape == (225, 50)

    # progress lines: no training loss and no rate before the first step, numbers after it
    assert len(lines) == 3 and "nan" not in " ".join(lines)
    assert " train_loss - " in lines[0] and lines[0].endswith("| - it/s")
    assert re.search(r" train_loss \d+\.\d\d .*\| \d+\.\d it/s$", lines[1])

    kept = train_one(condition="fa_wn", seed=2, epochs=2, dataset=prepared, batch_size=300, log=None,
                     out_dir=tmp_path / "kept")
    assert kept.run_dir == tmp_path / "kept" and (tmp_path / "kept" / "run.json").is_file()
    pd.testing.assert_frame_equal(kept.metrics, run.metrics)
    pd.testing.assert_frame_equal(load_run(tmp_path / "kept").metrics, run.metrics)


def test_train_one_merges_a_config_like_dict_into_the_protocol(smoke_data, one_torch_thread):
    """A new condition beside the protocol's five, trained as a main run; the protocol's keys stay."""
    _, prepared, _ = smoke_data
    config = {"conditions": {"dfa": {"rule": "dfa", "eta": 2e-4}}, "training": {"batch_size": 500}}
    run = train_one(config, condition="dfa", seed=4, epochs=1, dataset=prepared, log=None)
    assert (run.spec["rule"], run.spec["eta"], run.spec["batch_size"], run.spec["epochs"]) == ("dfa", 2e-4, 500, 1)
    assert run.spec["sizes"] == [225, 50, 50, 50, 50, 50] and run.spec["experiment"] == "main"
    assert len(run.metrics) == 6 and {"angle_dWfa_dWbp_1", "angle_W_Bt_1"} <= set(run.metrics.columns)
    # the output layer's update is the same under every rule (float32 arccos resolves about 0.03 degrees near 0)
    assert run.metrics["angle_dWfa_dWbp_4"].abs().max() < 0.1


def test_train_one_errors_name_the_fix(smoke_data):
    _, prepared, _ = smoke_data
    with pytest.raises(TypeError, match=r"unknown run-spec field\(s\) \['learning_rate'\].*'eta'"):
        train_one(dataset=prepared, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"no run main/fa_typo .* main/fa,"):
        train_one(dataset=prepared, condition="fa_typo")
    with pytest.raises(ValueError, match=r"phases \[100, 100\]: pass phases="):
        train_one(dataset=prepared, experiment="label_change", condition="fa", epochs=3)
    with pytest.raises(fa_config.ConfigError, match="conditions.fa.gamma"):
        train_one({"conditions": {"fa": {"gamma": 1.0}}}, dataset=prepared)
    with pytest.raises(ValueError, match="gamma .* when wn is true"):
        train_one(dataset=prepared, epochs=1, wn=True)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        train_one(dataset=prepared, seed=-1)


def test_importing_the_package_stays_light():
    """``import fa_analysis`` loads neither torch nor pandas; the API comes on first use."""
    code = ("import sys, fa_analysis; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "f = fa_analysis.train_one; from fa_analysis import train; "
            "assert fa_analysis.train_one is f and callable(train.train_run); print(sorted(fa_analysis.__all__))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "load_results" in out.stdout


def test_aggregation_and_figures_need_no_torch():
    """The many small jobs after training (aggregate, figures, summary) start without torch's import."""
    code = ("import sys; from fa_analysis import aggregate, figures, run_dir, artifacts, measures; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)


# ---------------------------------------------------------------------------------------------
# The command line


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"fa-analysis {fa_analysis.__version__}"


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "fa-analysis train --condition fa --seed 3 --epochs 5" in out


def test_one_off_train_and_the_workflow_form_give_the_same_run(smoke_data, mnist_root, tmp_path, one_torch_thread):
    """``train --condition --seed --epochs --out`` prepares its data; ``train CONFIG RUN --dataset`` reads it."""
    _, prepared, _ = smoke_data
    one_off = tmp_path / "one_off"
    assert cli.main(["train", "--config", str(SMOKE_CONFIG), "--condition", "fa", "--seed", "1", "--epochs", "2",
                     "--out", str(one_off), "--mnist-root", str(mnist_root)]) == 0
    first = load_run(one_off)
    assert (first.spec["experiment"], first.spec["condition"], first.spec["seed"], first.spec["epochs"]) == ("main", "fa", 1, 2)
    assert len(first.metrics) == 2 * 30  # 3,000 training images of the smoke config, minibatches of 100

    workflow_form = tmp_path / "workflow_form"
    assert cli.main(["train", str(SMOKE_CONFIG), "main/fa/1", "--dataset", str(prepared), "--out", str(workflow_form)]) == 0
    job = load_run(workflow_form)
    assert job.spec["epochs"] == 3
    pd.testing.assert_frame_equal(first.metrics, job.metrics.iloc[: len(first.metrics)])


def test_command_line_errors_name_the_fix(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", str(SMOKE_CONFIG), "main/fa/0", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2 and "needs --dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", str(SMOKE_CONFIG), "main/fa/0", "--dataset", "d.npz", "--out", "x", "--seed", "3"])
    assert "--seed belong to the form without RUN" in capsys.readouterr().err
    assert cli.main(["train", "--condition", "nope", "--out", str(tmp_path / "y"), "--mnist-root", str(tmp_path)]) == 2
    assert "no run main/nope" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_the_notebook_api_and_the_job_glue_share_a_floor_below_both():
    """``api`` never imports ``cli`` (which imports ``api`` for ``train`` without RUN): what both
    need, the observers of a spec and the package's log, is in ``jobs``."""
    from fa_analysis import api, cli, config as fa_config, jobs

    assert "cli" not in fa_config.package_modules("api")
    assert "jobs" in fa_config.package_modules("api") and "jobs" in fa_config.package_modules("cli")
    assert cli.observers_of is jobs.observers_of and cli.log is jobs.log
    assert not hasattr(api, "cli")
