"""The ``fa-analysis`` command: wrong arguments stop it before any compute, with exit code 2 and a
line naming the argument and the fix; a run it trains records the labels it trained on."""

from __future__ import annotations

import json

import pytest
import yaml

from fa_analysis import cli, data
from fa_analysis import config as fa_config

SMOKE_CONFIG = fa_config.REPO_ROOT / "tests" / "smoke" / "config.yaml"


def fa_analysis(capsys, *args: str) -> tuple[int, str, str]:
    """``fa-analysis ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, *args: str, naming: str) -> str:
    """Run ``fa-analysis ARGS``; assert exit code 2 and a short error naming ``naming``; return it."""
    code, out, err = fa_analysis(capsys, *args)
    assert code == 2 and out == ""
    assert naming in err and len(err.strip().splitlines()) <= 2, err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, mnist_root):
    """A config of two-iteration runs, its prepared data set and two noisy-label files."""
    root = tmp_path_factory.mktemp("tiny")
    config = fa_config.load_yaml(SMOKE_CONFIG)
    config["data"] = {"train_subset": 200, "test_subset": 100}
    config["training"] = {"batch_size": 100, "epochs": 1}
    config["alignment_terms"].update(epochs=1, iterations=[1], max_lag=1, lags_over_time=[1])
    config["remainder"].update(epochs=1, iterations=[1], every=1)
    config["embedding"]["landscape_train_subset"] = 100
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    dataset = data.prepare_dataset(mnist_root, download=False, out_path=root / "mnist15.npz",
                                   train_subset=200, test_subset=100)
    labels = {level: data.prepare_label_noise(dataset, level, 2021, root / f"labels_noise{level}.npz")
              for level in (20, 100)}
    return {"config": root / "tiny.yaml", "dataset": dataset, "labels": labels}


# ---------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("run", ["main/fa", "main/fa/x", "main/fa/0/1", "main/fa/-1"])
def test_malformed_run_id_names_the_format(capsys, run):
    err = refused(capsys, "train", SMOKE_CONFIG, run, "--dataset", "d.npz", "--out", "o", naming="argument run")
    assert "experiment/condition/seed" in err and "main/fa/0" in err


def test_unknown_run_names_the_command_that_lists_them(capsys):
    err = refused(capsys, "train", SMOKE_CONFIG, "main/fa/7", "--dataset", "d.npz", "--out", "o", naming="main/fa/7")
    assert "fa-analysis specs" in err


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_threads_must_be_a_positive_integer(capsys, threads):
    refused(capsys, "train", SMOKE_CONFIG, "main/fa/0", "--dataset", "d.npz", "--out", "o", "--threads", threads,
            naming="argument --threads")


def test_missing_dataset_names_the_option(capsys, tmp_path):
    err = refused(capsys, "train", SMOKE_CONFIG, "main/fa/0", "--dataset", tmp_path / "none.npz",
                  "--out", tmp_path / "run", naming="argument --dataset")
    assert str(tmp_path / "none.npz") in err and not (tmp_path / "run").exists()


def test_malformed_yaml_names_the_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: 3\n  batch_size: [100\n")
    err = refused(capsys, "check-config", bad, naming=str(bad))
    assert "line 4" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# --out: never replaces what is there unless told


@pytest.mark.parametrize("what", ["results folder", "notes folder", "file"])
def test_out_refuses_an_existing_path(capsys, tiny, tmp_path, what):
    out = tmp_path / "out"
    if what == "file":
        out.write_text("a file\n")
    else:
        (out / ("runs/main/fa/seed0" if what == "results folder" else "")).mkdir(parents=True, exist_ok=True)
        (out / "notes.txt").write_text("notes\n")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    err = refused(capsys, "train", tiny["config"], "main/fa/0", "--dataset", tiny["dataset"], "--out", out,
                  naming="argument --out")
    assert "--force" in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_out_may_be_an_empty_directory_and_force_replaces(capsys, tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fa_analysis(capsys, "train", tiny["config"], "main/fa/0", "--dataset", tiny["dataset"], "--out", empty)[0] == 0
    assert (empty / "run.json").is_file()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("notes\n")
    code, _, _ = fa_analysis(capsys, "train", tiny["config"], "main/fa/0", "--dataset", tiny["dataset"],
                             "--out", notes, "--force")
    assert code == 0 and (notes / "run.json").is_file() and not (notes / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


# ---------------------------------------------------------------------------------------------
# --labels: the labels trained on match the run's spec, and run.json says which they were


def test_labels_on_a_run_without_label_noise_are_refused(capsys, tiny, tmp_path):
    err = refused(capsys, "train", tiny["config"], "main/fa/0", "--dataset", tiny["dataset"], "--out", tmp_path / "run",
                  "--labels", tiny["labels"][100], naming="argument --labels")
    assert "label_noise 0" in err and not (tmp_path / "run").exists()


def test_labels_of_another_level_are_refused(capsys, tiny, tmp_path):
    err = refused(capsys, "train", tiny["config"], "label_noise/fa_p100/0", "--dataset", tiny["dataset"],
                  "--out", tmp_path / "run", "--labels", tiny["labels"][20], naming="argument --labels")
    assert "20 % noisy labels" in err and "label_noise 100" in err


def test_missing_labels_name_the_option(capsys, tiny, tmp_path):
    err = refused(capsys, "train", tiny["config"], "label_noise/fa_p100/0", "--dataset", tiny["dataset"],
                  "--out", tmp_path / "run", naming="argument --labels")
    assert "100 % noisy labels" in err and "labels=" not in err


def test_run_json_records_the_labels_trained_on(capsys, tiny, tmp_path):
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    assert fa_analysis(capsys, "train", tiny["config"], "label_noise/fa_p100/0", "--dataset", tiny["dataset"],
                       "--out", noisy, "--labels", tiny["labels"][100])[0] == 0
    assert fa_analysis(capsys, "train", tiny["config"], "label_noise/fa_p0/0", "--dataset", tiny["dataset"],
                       "--out", clean)[0] == 0
    noisy_info, clean_info = (json.loads((run / "run.json").read_text()) for run in (noisy, clean))
    assert noisy_info["labels"] == {"file": str(tiny["labels"][100]), "label_noise": 100.0, "seed": 2021}
    assert noisy_info["spec"]["label_noise"] == 100.0
    assert clean_info["labels"] == {"file": None, "label_noise": 0.0}
