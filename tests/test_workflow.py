"""The Snakemake workflow, for real, on the smoke configuration (tests/smoke/config.yaml).

Every Snakemake call runs in its own temporary working directory with the repository's
Snakefile, its config.yaml linked in (so that config edits merge exactly as in a real run) and the
MNIST root from ``FA_MNIST_ROOT`` with ``download: false``. The end-to-end run happens once per
session and the other tests read or dry-run against it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fa_analysis import aggregate, cli, embedding
from fa_analysis import config as fa_config

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "tests" / "smoke" / "config.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
FIGURES = (
    "open_loop", "open_loop_beta", "angle_W_Bt", "accuracy_loss", "alignment_terms_lag",
    "alignment_terms_time", "update_angle", "shadow_linearised", "shadow_random_b",
    "trajectory_pca", "trajectory_umap", "label_noise", "label_change", "remainder", "similarity",
    "toy_term_geometry", "toy_term_spectrum", "toy_distributions", "toy_closed_net", "toy_closed_net_wn",
    "toy_autocorrelation", "toy_depth",
)
# One thread per process: the machine running the tests is small and shared.
THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}

slow = pytest.mark.slow


def smoke_config() -> dict:
    return fa_config.load_yaml(SMOKE_CONFIG)


class Workflow:
    """Snakemake on a snapshot of the workflow and the package, in working directories of its own.

    The snapshot (Snakefile, config.yaml, workflow/, envs/, fa_analysis/, first on PYTHONPATH)
    keeps edits made to the checkout during the session out of the runs and their code hashes.
    """

    def __init__(self, snapshot: Path, mnist_root: Path):
        self.snapshot = snapshot
        self.env = {**os.environ, **THREAD_ENV, "PYTHONPATH": os.pathsep.join(
            [str(snapshot), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.mnist_root = mnist_root

    def workdir(self, path: Path, overlay: dict | None = None) -> Path:
        """A working directory with config.yaml linked in and the smoke config (+ ``overlay``) as smoke.yaml."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").symlink_to(self.snapshot / "config.yaml")
        config = smoke_config()
        for key, value in (overlay or {}).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        (path / "smoke.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def command(self, workdir: Path, *args: str, configfile: str | None = "smoke.yaml") -> list[str]:
        # targets first: --configfile and --config take every value that follows them
        command = [str(SNAKEMAKE), *args, "--snakefile", str(self.snapshot / "Snakefile"),
                   "--directory", str(workdir), "--cores", "2"]
        if configfile:
            command += ["--configfile", str(workdir / configfile)]
        return command + ["--config", f"data={{root: {self.mnist_root}, download: false}}"]

    def run(self, workdir: Path, *args: str, check: bool = True, timeout: float = 600,
            configfile: str | None = "smoke.yaml") -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(workdir, *args, configfile=configfile),
                                capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-6000:]}")
        return result

    def planned(self, workdir: Path, configfile: str = "smoke.yaml") -> dict[str, list[str]]:
        """``{rule: [output, ...]}`` of the jobs a run would execute now (``--detailed-summary``)."""
        result = self.run(workdir, "--detailed-summary", configfile=configfile)
        rows = csv.DictReader((line for line in result.stdout.splitlines() if "\t" in line), delimiter="\t")
        jobs: dict[str, list[str]] = {}
        for row in rows:
            if row["plan"] != "no update":
                jobs.setdefault(row["rule"], []).append(row["output_file"])
        return jobs


def copy_of(smoke_run, path: Path) -> Path:
    """A copy of the finished smoke run's working directory (results and Snakemake's records)."""
    workdir, _, _ = smoke_run
    shutil.copytree(workdir, path, symlinks=True)
    return path


def with_eta(path: Path, condition: str, eta: float) -> Path:
    """The smoke config with every condition of config.yaml written out and ``condition``'s eta
    changed: what Snakemake merges and what ``load_config`` reads are then the same config."""
    config = smoke_config()
    conditions = config.setdefault("conditions", {})
    for name, settings in fa_config.load_config(REPO / "config.yaml")["conditions"].items():
        conditions.setdefault(name, settings)
    conditions[condition]["eta"] = eta
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def processes_with_open(paths) -> dict[Path, int]:
    """``{path: process id}`` of the processes that have one of ``paths`` open, from /proc."""
    wanted = {str(path): Path(path) for path in paths}
    found = {}
    for fds in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fds.iterdir():
                if (target := os.readlink(fd)) in wanted:
                    found[wanted[target]] = int(fds.parent.name)
    return found


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only, for root too: a read-only bind mount over it where this process may mount,
    else mode 0555 (which stops every user but root). Skips the test where neither holds."""
    mounted = os.geteuid() == 0 and all(
        subprocess.run(command, capture_output=True).returncode == 0
        for command in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]))
    mode = path.stat().st_mode
    if not mounted:
        subprocess.run(["umount", str(path)], capture_output=True)
        path.chmod(0o555)
    try:
        with contextlib.suppress(OSError):
            (path / ".probe").touch()
            (path / ".probe").unlink()
            pytest.skip(f"cannot make {path} read-only here (root without the right to mount)")
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        else:
            path.chmod(mode)


def training_runs(outputs: list[str]) -> set[tuple[str, str, int]]:
    """``(experiment, condition, seed)`` of training outputs ``.../runs/{e}/{c}/seed{s}`` (a sweep's c holds slashes)."""
    keys = set()
    for path in outputs:
        match = re.search(r"runs/([^/]+)/(.+)/seed(\d+)$", path)
        keys.add((match.group(1), match.group(2), int(match.group(3))))
    return keys


@pytest.fixture(scope="session")
def workflow(tmp_path_factory, mnist_root) -> Workflow:
    snapshot = tmp_path_factory.mktemp("snapshot")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, snapshot / name)
    for name in ("workflow", "envs", "fa_analysis"):
        shutil.copytree(REPO / name, snapshot / name, ignore=shutil.ignore_patterns("__pycache__"))
    return Workflow(snapshot, mnist_root)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, workflow):
    """The whole smoke DAG, once: (working directory, results directory, wall seconds)."""
    workdir = workflow.workdir(tmp_path_factory.mktemp("workflow") / "smoke")
    started = time.perf_counter()
    workflow.run(workdir, timeout=900)
    seconds = time.perf_counter() - started
    print(f"\nsmoke workflow: {seconds:.0f} s wall on {os.cpu_count()} CPUs")
    return workdir, workdir / smoke_config()["results"], seconds


# ---------------------------------------------------------------------------------------------
# End to end


@slow
def test_smoke_run_draws_every_figure_and_the_summary(smoke_run):
    _, results, _ = smoke_run
    for name in FIGURES:
        for fmt in ("png", "pdf"):
            path = results / "figures" / f"{name}.{fmt}"
            assert path.is_file() and path.stat().st_size > 1000, path
    specs = fa_config.run_specs(fa_config.load_config(SMOKE_CONFIG))
    layout = fa_config.experiment_conditions(specs)
    with (results / "tables" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["experiment"], row["condition"]) for row in rows} == {
        (experiment, condition) for experiment, conditions in layout.items() for condition in conditions
    }
    assert all(row["n_seeds"] == str(len(layout[row["experiment"]][row["condition"]])) for row in rows)
    assert "±" in (results / "tables" / "summary.md").read_text()
    # conditions beyond the protocol's five (DFA, a renamed FA at another eta) go through every stage
    assert {("main", "dfa"), ("main", "fa_half_eta")} <= {(row["experiment"], row["condition"]) for row in rows}
    assert (results / "aggregated" / "main" / "fa_half_eta" / "metrics.parquet").is_file()


@slow
def test_readme_python_example_runs_against_the_smoke_results(smoke_run, mnist_root, tmp_path, monkeypatch):
    """The README's "From Python" code as written, with `results` the smoke run's results folder."""
    from test_api import readme_python_blocks

    _, results, _ = smoke_run
    (tmp_path / "results").symlink_to(results)
    (tmp_path / "data").symlink_to(mnist_root)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(readme_python_blocks()), "README.md", "exec"), namespace)
    angles = namespace["angles"]
    specs = fa_config.run_specs(fa_config.load_config(SMOKE_CONFIG))
    main_runs = {(c, s) for e, c, s in specs if e == "main"}
    assert set(zip(angles["condition"], angles["seed"])) == main_runs  # dfa and fa_half_eta included
    assert {"angle_W_Bt_1", "angle_W_Bt_4", "angle_W_Bt_all"} <= set(angles.columns)
    assert namespace["summary"].equals(pd.read_csv(results / "tables" / "summary.csv"))
    assert namespace["run"].status == "completed"


@slow
def test_smoke_run_leaves_a_complete_run_directory_per_spec(smoke_run):
    _, results, _ = smoke_run
    specs = fa_config.run_specs(fa_config.load_config(SMOKE_CONFIG))
    found = {path.parent for path in (results / "runs").glob("*/**/seed*/run.json")}  # sweeps: c holds slashes
    assert found == {results / "runs" / e / c / f"seed{s}" for e, c, s in specs}
    logs = list((results / "logs" / "train").glob("*/**/seed*.log"))
    assert len(logs) == len(specs) and all("epoch" in log.read_text() for log in logs)
    assert (results / "benchmarks" / "train" / "main" / "fa" / "seed0.tsv").is_file()


@slow
def test_rerun_has_nothing_to_do(smoke_run, workflow):
    workdir, _, _ = smoke_run
    result = workflow.run(workdir, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert workflow.planned(workdir) == {}


@slow
def test_report_collects_every_figure_and_the_table(smoke_run, workflow):
    workdir, _, _ = smoke_run
    workflow.run(workdir, "--report", str(workdir / "report.html"), timeout=300)
    html = (workdir / "report.html").read_text()
    for name in (*FIGURES, "sweep_smoke", "summary"):
        assert f"{name}.png" in html or f"{name}.csv" in html, name


# ---------------------------------------------------------------------------------------------
# Reruns after a config edit (dry runs against the finished smoke run)


@slow
def test_editing_one_eta_reruns_exactly_that_conditions_jobs(smoke_run, workflow):
    workdir, _, _ = smoke_run
    edited = fa_config.load_yaml(SMOKE_CONFIG)
    edited["conditions"]["fa_wn"]["eta"] = 4.0e-4
    (workdir / "edited.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))

    jobs = workflow.planned(workdir, configfile="edited.yaml")

    # main trains fa_wn at its own eta; label_change and trajectory override eta: untouched
    assert training_runs(jobs["train"]) == {("main", "fa_wn", 0), ("main", "fa_wn", 1)}
    assert {str(Path(p).relative_to(Path(p).parents[2])) for p in jobs["aggregate"]} == {"aggregated/main/fa_wn"}
    figures = {Path(p).stem for rule, outputs in jobs.items() if rule.startswith("figure_") for p in outputs}
    assert figures == {"angle_W_Bt", "accuracy_loss", "update_angle"}
    assert set(jobs) - {f"figure_{name}" for name in figures} == {"train", "aggregate", "summary"}

    # the trajectory experiment's own override of gamma reaches exactly its WN runs
    edited = fa_config.load_yaml(SMOKE_CONFIG)
    edited["experiments"]["trajectory"]["overrides"] = {"eta": 5.0e-4, "gamma": 0.8}
    (workdir / "trajectory.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    jobs = workflow.planned(workdir, configfile="trajectory.yaml")
    assert training_runs(jobs["train"]) == {("trajectory", "bp_wn", 0), ("trajectory", "fa_wn", 0)}
    figures = {Path(p).stem for rule, outputs in jobs.items() if rule.startswith("figure_") for p in outputs}
    assert figures == {"trajectory_pca", "trajectory_umap"}


@slow
def test_editing_the_collapse_margin_reruns_the_aggregation_and_embeddings_not_training(smoke_run, workflow):
    """analysis.collapse_margin decides runs.csv's status and the embeddings' labels (method §5.6)."""
    workdir, _, _ = smoke_run
    edited = fa_config.load_yaml(SMOKE_CONFIG)
    edited["analysis"] = {"collapse_margin": 0.2}
    (workdir / "margin.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))

    jobs = workflow.planned(workdir, configfile="margin.yaml")

    assert "train" not in jobs and "open_loop" not in jobs
    specs = fa_config.run_specs(fa_config.load_config(SMOKE_CONFIG))
    assert len(jobs["aggregate"]) == len({(e, c) for e, c, _ in specs})
    assert {"trajectory_pca", "trajectory_umap", "summary"} <= set(jobs)


@slow
def test_editing_an_open_loop_setting_reruns_no_training(smoke_run, workflow):
    workdir, _, _ = smoke_run
    edited = fa_config.load_yaml(SMOKE_CONFIG)
    edited["open_loop"]["eta"] = 0.003
    (workdir / "open_loop.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))

    jobs = workflow.planned(workdir, configfile="open_loop.yaml")

    assert set(jobs) == {"open_loop", "open_loop_beta", "figure_open_loop", "figure_open_loop_beta"}
    assert {Path(p).stem for p in jobs["open_loop"]} == {"auto", "cross", "both", "none"}


@slow
def test_editing_one_toy_experiment_reruns_that_experiment_alone(smoke_run, workflow):
    """Each toy job's params are its own config slice (method §11)."""
    workdir, _, _ = smoke_run
    edited = fa_config.load_yaml(SMOKE_CONFIG)
    edited["toy"]["depth"]["mask_probability"] = 0.25
    edited["toy"]["autocorrelation"]["gamma"] = 0.7
    (workdir / "toy.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))

    jobs = workflow.planned(workdir, configfile="toy.yaml")

    assert set(jobs) == {"toy_depth", "figure_toy_depth", "toy_autocorrelation", "figure_toy_autocorrelation"}
    assert {Path(p).stem for p in jobs["toy_autocorrelation"]} == {
        f"autocorrelation_{sweep}_wn{wn}" for sweep in ("error", "input") for wn in (0, 1)
    }


def with_sweep_grid(path: Path, **grid) -> Path:
    """The smoke config with the smoke sweep's grid fields ``grid`` replaced."""
    config = smoke_config()
    config["sweeps"]["smoke"]["grid"].update(grid)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@slow
def test_smoke_sweep_reaches_its_tables_figure_and_summary_rows(smoke_run):
    """The smoke config's 2 x 2 sweep (method §12): a row per run, the points over seeds, the figure."""
    from fa_analysis import load_results

    workdir, results, _ = smoke_run
    sweep = smoke_config()["sweeps"]["smoke"]
    points = {f"smoke/fa/gamma~{g}/label_smoothing~{s}" for g in ("none", "1") for s in ("0", "0.05")}
    runs = load_results(results).sweep("smoke")
    assert set(zip(runs["condition"], runs["seed"])) == {(p, seed) for p in points for seed in sweep["seeds"]}
    assert set(zip(runs["gamma"], runs["label_smoothing"])) == {("none", "0"), ("none", "0.05"), ("1", "0"), ("1", "0.05")}
    assert set(runs["status"]) <= {"completed", "collapsed"} and runs["last_epochs_test_accuracy"].notna().all()
    for row in runs.itertuples():  # the last epoch of the last phase (last_epochs: 1), read from the run itself
        evaluation = pd.read_parquet(workdir / row.run_dir / "evaluation.parquet")
        last = evaluation[(evaluation["phase"] == 1) & (evaluation["epoch"] == 2)]["test_accuracy"]
        assert row.last_epochs_test_accuracy == pytest.approx(float(last.iloc[0]))
    spread = load_results(results).sweep("smoke", points=True)
    assert set(spread["condition"]) == points and (spread["n_runs"] == 2).all()
    for fmt in ("png", "pdf"):
        assert (results / "figures" / f"sweep_smoke.{fmt}").stat().st_size > 1000
    summary = pd.read_csv(results / "tables" / "summary.csv")
    rows = summary[summary["experiment"] == "sweep"]
    assert set(rows["condition"]) == points and (rows["n_seeds"] == 2).all()


@slow
def test_adding_a_grid_value_runs_exactly_the_new_runs_and_removing_one_none(smoke_run, workflow, tmp_path):
    workdir, _, _ = smoke_run
    added = with_sweep_grid(workdir / "sweep_added.yaml", gamma=["none", 0.5, 1.0])
    jobs = workflow.planned(workdir, configfile=added.name)
    assert training_runs(jobs["train"]) == {
        ("sweep", f"smoke/fa/gamma~0.5/label_smoothing~{s}", seed) for s in ("0", "0.05") for seed in (0, 1)}
    assert {p.split("aggregated/")[1] for p in jobs["aggregate"]} == {
        f"sweep/smoke/fa/gamma~0.5/label_smoothing~{s}" for s in ("0", "0.05")}
    assert set(jobs) == {"train", "aggregate", "sweep_table", "figure_sweep", "summary"}

    removed = with_sweep_grid(workdir / "sweep_removed.yaml", gamma=["none"])
    jobs = workflow.planned(workdir, configfile=removed.name)
    assert set(jobs) == {"sweep_table", "figure_sweep", "summary"}  # no training, no aggregation

    # and run: the removed points leave the sweep's tables and the summary (their runs stay on disk)
    copy = copy_of(smoke_run, tmp_path / "removed")
    workflow.run(copy, configfile=removed.name, timeout=300)
    results = copy / smoke_config()["results"]
    runs = pd.read_csv(results / "sweeps" / "smoke" / "runs.csv", dtype={"gamma": str})
    assert set(runs["gamma"]) == {"none"} and len(runs) == 4
    assert set(json.loads((results / "sweeps" / "smoke" / "sweep.json").read_text())["points"]) == {
        f"smoke/fa/gamma~none/label_smoothing~{s}" for s in ("0", "0.05")}
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert not summary["condition"].str.contains("gamma~1").any()
    assert (results / "runs" / "sweep" / "smoke" / "fa" / "gamma~1").is_dir()


# ---------------------------------------------------------------------------------------------
# Failures


@slow
@pytest.mark.parametrize(
    ("overlay", "key"),
    [  # one error of the schema, one of the cross-field checks (tests/test_config.py has them all)
        ({"conditions": {"fa": {"etaa": 1.0e-3}}}, "'conditions.fa.etaa'"),
        ({"conditions": {"bp": {"gamma": 0.6}}}, "'conditions.bp.gamma'"),
        ({"experiments": {"main": {"seeds": []}}}, "'experiments.main.seeds' is empty: list at least one seed"),
    ],
    ids=["typo", "gamma-without-wn", "no-seeds"],
)
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, workflow, overlay, key):
    workdir = workflow.workdir(tmp_path / "bad", overlay)
    result = workflow.run(workdir, check=False, timeout=120)
    assert result.returncode != 0
    assert key in result.stderr
    assert not (workdir / "results").exists()


@slow
def test_a_number_without_a_dot_is_a_number(tmp_path, workflow):
    """Snakemake reads --configfile with PyYAML, which takes 1e-4 for a string."""
    workdir = workflow.workdir(tmp_path / "eta")
    config = smoke_config()
    config["conditions"]["fa"]["eta"] = "ETA"
    text = yaml.safe_dump(config, sort_keys=False)
    assert text.count("eta: ETA") == 1
    (workdir / "smoke.yaml").write_text(text.replace("eta: ETA", "eta: 1e-4"))
    result = workflow.run(workdir, "--dry-run", check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@slow
def test_killed_training_job_leaves_nothing_complete(smoke_run, tmp_path, workflow):
    """SIGKILL to Snakemake and its job mid-training: no output counts as done; the next run finishes."""
    _, results, _ = smoke_run
    # long enough (9,000 iterations) to be killed in the middle, short enough to run again
    workdir = workflow.workdir(tmp_path / "killed", {"training": {"epochs": 300}})
    data = workdir / "results" / "smoke" / "data"
    shutil.copytree(results / "data", data)  # skip data preparation; the DAG takes it as done
    target = "results/smoke/runs/main/fa/seed0"
    log = workdir / "results" / "smoke" / "logs" / "train" / "main" / "fa" / "seed0.log"

    process = subprocess.Popen(workflow.command(workdir, target), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, env=workflow.env)
    try:
        deadline = time.monotonic() + 300
        while not (log.is_file() and "epoch 1/" in log.read_text()):
            assert process.poll() is None, "snakemake ended before the training job got going"
            assert time.monotonic() < deadline, "the training job did not start"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone if snakemake failed early
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert "epoch 300/300" not in log.read_text(), "the job finished before it was killed"

    assert not (workdir / target).exists()
    workflow.run(workdir, "--unlock")  # Snakemake's own lock outlives a SIGKILL
    assert ("main", "fa", 0) in training_runs(workflow.planned(workdir)["train"])
    workflow.run(workdir, target, timeout=300)
    assert (workdir / target / "run.json").is_file()


@slow
def test_killed_jobs_after_a_config_edit_leave_nothing_stale(smoke_run, tmp_path, workflow, one_torch_thread):
    """Edit conditions.bp.eta, then SIGKILL the python process of each retraining job as it starts
    (as the kernel's out-of-memory killer would): what was made from the old runs (aggregates,
    embeddings, figures, the summary) must not look current. The next run rebuilds the lost runs
    and everything made from them, with the results of a clean run."""
    workdir = copy_of(smoke_run, tmp_path / "edited")
    edited = with_eta(workdir / "edited.yaml", "bp", 8.0e-4)
    results = workdir / smoke_config()["results"]
    planned = workflow.planned(workdir, configfile=edited.name)
    retrained = training_runs(planned["train"])
    assert retrained and {condition for _, condition, _ in retrained} == {"bp"}
    logs = {results / "logs" / "train" / e / c / f"seed{s}.log" for e, c, s in retrained}

    process = subprocess.Popen(workflow.command(workdir, "--keep-going", configfile=edited.name),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=workflow.env)
    killed, deadline = set(), time.monotonic() + 300
    while killed != logs:
        assert process.poll() is None, f"snakemake ended before every job was killed:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, f"not every retraining job started: {sorted(logs - killed)}"
        for log, job in processes_with_open(logs - killed).items():
            os.kill(job, signal.SIGKILL)
            killed.add(log)
        time.sleep(0.02)
    process.communicate(timeout=300)
    assert process.returncode != 0
    assert not any((results / "runs" / e / c / f"seed{s}").exists() for e, c, s in retrained)

    # everything the edit made stale is still planned, the lost runs with it
    assert workflow.planned(workdir, configfile=edited.name) == planned
    killed_at = time.time()
    workflow.run(workdir, configfile=edited.name)
    result = workflow.run(workdir, "--dry-run", configfile=edited.name)
    assert "Nothing to be done" in result.stdout + result.stderr
    for outputs in planned.values():
        assert all((workdir / output).stat().st_mtime > killed_at for output in outputs), outputs

    # the results are those of a clean run: the same runs trained here, aggregated and summarised
    specs = fa_config.run_specs(fa_config.load_config(edited))
    clean = tmp_path / "clean"
    for e, c, s in retrained:
        assert specs[(e, c, s)]["eta"] == 8.0e-4
        run, expected = results / "runs" / e / c / f"seed{s}", clean / "runs" / e / c / f"seed{s}"
        cli.train_job(specs[(e, c, s)], 1, str(results / "data" / "mnist15.npz"), None, str(expected))
        for table in ("metrics", "evaluation"):
            pd.testing.assert_frame_equal(pd.read_parquet(run / f"{table}.parquet"),
                                          pd.read_parquet(expected / f"{table}.parquet"))
        for archive in ("snapshots", "weights"):
            with np.load(run / f"{archive}.npz") as rebuilt, np.load(expected / f"{archive}.npz") as reference:
                assert rebuilt.files == reference.files
                assert all(np.array_equal(rebuilt[name], reference[name]) for name in reference.files), archive
    summary = pd.read_csv(results / "tables" / "summary.csv").set_index(["experiment", "condition"])
    for e, c in {(e, c) for e, c, _ in retrained}:
        seeds = fa_config.experiment_conditions(specs)[e][c]
        assert {(e, c, s) for s in seeds} <= retrained
        aggregate.aggregate_condition([clean / "runs" / e / c / f"seed{s}" for s in seeds], clean / "aggregated" / e / c)
        for table in ("metrics", "evaluation"):
            pd.testing.assert_frame_equal(pd.read_parquet(results / "aggregated" / e / c / f"{table}.parquet"),
                                          pd.read_parquet(clean / "aggregated" / e / c / f"{table}.parquet"))
        expected = aggregate.summary_table([clean / "aggregated" / e / c], tmp_path / "s.csv", tmp_path / "s.md").iloc[0]
        for column in ("final_test_accuracy_mean", "angle_W_Bt_all_mean"):
            assert summary.loc[(e, c), column] == pytest.approx(expected[column], rel=1e-12), (e, c, column)


@slow
def test_results_read_only_midway_leave_nothing_stale(smoke_run, tmp_path, workflow):
    """After an edit of conditions.bp.eta, the folder of the main/bp runs turns read-only once their
    old outputs are gone: the run fails naming the path and leaves nothing half-written, and once
    the folder is writable again the next run plans the runs and everything made from them."""
    workdir = copy_of(smoke_run, tmp_path / "read_only")
    edited = with_eta(workdir / "edited.yaml", "bp", 8.0e-4)
    results = workdir / smoke_config()["results"]
    folder, logs = results / "runs" / "main" / "bp", results / "logs" / "train" / "main" / "bp"
    for old in (*folder.iterdir(), *logs.iterdir()):  # what Snakemake does first to a rerun job's output
        shutil.rmtree(old) if old.is_dir() else old.unlink()

    with read_only(folder):
        result = workflow.run(workdir, configfile=edited.name, check=False)
        assert result.returncode != 0 and "runs/main/bp/seed" in result.stderr
        # Snakemake's own clean-up before a job (read-only mount), or the job writing (mode 0555)
        errors = result.stderr + "".join(log.read_text() for log in logs.iterdir())
        assert re.search(r"(Read-only file system|Permission denied): '\S*runs/main/bp/", errors), errors[-3000:]
        assert list(folder.iterdir()) == []

    jobs = workflow.planned(workdir, configfile=edited.name)
    assert {("main", "bp", 0), ("main", "bp", 1)} <= training_runs(jobs["train"])
    assert str(results.relative_to(workdir) / "aggregated" / "main" / "bp") in jobs["aggregate"]
    assert {"figure_accuracy_loss", "summary"} <= set(jobs)


@slow
def test_a_second_snakemake_in_the_same_folder_is_refused(smoke_run, tmp_path, workflow):
    """Two invocations at once: the second stops at Snakemake's lock without touching anything,
    the first finishes as if alone."""
    workdir = copy_of(smoke_run, tmp_path / "concurrent")
    results = workdir / smoke_config()["results"]
    figure, log = results / "figures" / "open_loop.png", results / "logs" / "figures" / "open_loop.log"
    drawn = figure.stat().st_mtime_ns
    first = subprocess.Popen(workflow.command(workdir, "--forcerun", "figure_open_loop"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=workflow.env)
    deadline = time.monotonic() + 120
    while not (job := processes_with_open([log])):
        assert first.poll() is None, f"the first snakemake ended before its job started:\n{first.stderr.read()}"
        assert time.monotonic() < deadline, "the figure job did not start"
        time.sleep(0.02)
    job = job[log]
    os.kill(job, signal.SIGSTOP)  # hold the first run in the middle of its job
    try:
        before = {path: path.stat().st_mtime_ns for path in results.rglob("*")}
        second = workflow.run(workdir, check=False)
        assert second.returncode != 0 and "cannot be locked" in second.stderr
        assert {path: path.stat().st_mtime_ns for path in results.rglob("*")} == before
    finally:
        os.kill(job, signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert figure.stat().st_mtime_ns > drawn
    assert workflow.planned(workdir) == {}


# ---------------------------------------------------------------------------------------------
# The workflow as a whole


@slow
def test_lint_is_clean(tmp_path, workflow):
    result = workflow.run(workflow.workdir(tmp_path / "lint"), "--lint")
    assert "Congratulations" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@slow
def test_full_config_plans_one_training_job_per_run(tmp_path, workflow):
    workdir = workflow.workdir(tmp_path / "full")
    result = workflow.run(workdir, "--dry-run", "--quiet", "rules", configfile=None, timeout=300)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    specs = fa_config.run_specs(fa_config.load_config(REPO / "config.yaml"))
    assert int(counts["train"]) == len(specs) == 267
    assert int(counts["aggregate"]) == sum(len(c) for c in fa_config.experiment_conditions(specs).values())
    print(f"\nfull DAG: {counts['total']} jobs, {counts['train']} training jobs")


@slow
def test_profile_names_only_rules_of_the_workflow(tmp_path, workflow):
    result = workflow.run(workflow.workdir(tmp_path / "rules"), "--list-rules")
    rules = set(result.stdout.split())
    for name in ("slurm", "slurm-gpu"):
        profile = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        groups = dict(item.split("=", 1) for item in profile["groups"])
        components = dict(item.split("=", 1) for item in profile["group-components"])
        named = set(profile.get("set-resources") or {}) | set(profile["set-threads"]) | set(groups)
        assert named <= rules, (name, named - rules)
        assert set(components) <= set(groups.values()), (name, components)
        assert profile["executor"] == "slurm"


def test_the_workflow_profile_is_read_and_plans_the_protocol(tmp_path):
    """profiles/default applies to every run of the checkout: the scheduler settings it names are
    Snakemake options, and the full protocol plans with them (a dry run)."""
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile == {"max-jobs-per-timespan": "1000/10s", "scheduler": "greedy"}
    result = subprocess.run(
        [str(SNAKEMAKE), "-n", "--cores", "2", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO),
         "--config", f"results={tmp_path / 'results'}", "data={root: data, download: false}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **THREAD_ENV},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Using workflow specific profile profiles/default" in output
    assert re.search(r"^total\s+339$", output, flags=re.MULTILINE)


def test_conda_env_pins_exactly_the_constraints():
    env = yaml.safe_load((REPO / "envs" / "fa.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    constraints = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    assert sorted(pip) == sorted(constraints)
    assert "python=3.11" in env["dependencies"]
