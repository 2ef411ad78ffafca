"""The package from Python (notebooks): train one run in memory, read a results folder as tables.

Three entry points, re-exported by the package (``import fa_analysis``):

- :func:`train_one` -- one training run from a config-like dict (completed by the schema's
  defaults, i.e. the protocol of config.yaml) and an MNIST root: the data are prepared in memory
  exactly as the workflow's data stage prepares them, and the run is the workflow's training job
  (same run spec, same observers). A run directory is written only when ``out_dir`` is given.
- :func:`load_run` -- one run directory (from the workflow, from ``train_one(out_dir=...)`` or
  from ``fa-analysis train ... --out DIR``) as the same :class:`TrainResult`.
- :func:`load_results` -- a results folder of the workflow as a :class:`Results`, whose methods
  return tidy pandas tables: one row per run, per-iteration metrics and evaluations with
  ``experiment``, ``condition`` and ``seed`` columns, the observers' tables, the aggregated means,
  the summary table and each sweep's tables (method §12).

The function is ``train_one``, not ``train``: ``fa_analysis.train`` is the training module.
Everything is read through the readers of :mod:`fa_analysis.aggregate` (run directories) and
pandas (Parquet and CSV); the layouts are those of docs/design.md. The measures are defined in
docs/method.md (per-iteration measures: method §5; observers' tables: method §6).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fa_analysis import aggregate, config as fa_config
from fa_analysis.run_dir import read_run
from fa_analysis.spec import SPEC_KEYS

PathLike = str | Path
#: A filter on experiments, conditions, seeds or columns: one value, several, or None for all.
Selection = str | int | Iterable | None

ID_COLUMNS = ("experiment", "condition", "seed")


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """One training run: its tables as DataFrames, its final values and its run spec.

    - ``metrics``: one row per iteration, measured on the state before the step (method §5);
    - ``evaluation``: test accuracy and loss at the start of every epoch and after the last;
    - ``tables``: the observers' tables by name (``terms_lag``, ``terms_time``,
      ``terms_similarity``, ``shadow``, ``remainder``; method §6), empty for a plain run;
    - ``record``: the run's row of ``runs.csv`` (status, divergence, final test accuracy and
      loss, final angles ``angle_W_Bt_*``);
    - ``weights``: initial and final ``W``, ``b`` and the fixed ``B``, ``D`` as NumPy arrays
      (``W0_init``, ``W0_final``, ..., ``B1``);
    - ``info``: the run's ``run.json`` (spec, seed, code version, timings, ...);
    - ``run_dir``: where the run directory is, or None when nothing was written.
    """

    spec: dict
    status: str
    metrics: pd.DataFrame
    evaluation: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    record: dict
    weights: dict[str, np.ndarray]
    info: dict
    run_dir: Path | None

    @property
    def final_test_accuracy(self) -> float:
        """Test accuracy at the last evaluation the run reached (before divergence, if it diverged)."""
        return self.record["final_test_accuracy"]

    def __repr__(self) -> str:
        name = f"{self.spec['experiment']}/{self.spec['condition']}/seed{self.spec['seed']}"
        return (f"TrainResult({name}, {self.status}, {len(self.metrics)} iterations, final test accuracy "
                f"{self.final_test_accuracy:.4f}, tables {sorted(self.tables)})")


def load_run(run_dir: PathLike) -> TrainResult:
    """Read one finished run directory (docs/design.md, "Run artifact") as a :class:`TrainResult`."""
    return _read_run_dir(Path(run_dir), keep_path=True)


def _read_run_dir(path: Path, keep_path: bool) -> TrainResult:
    run = read_run(path)  # names the missing file when the directory is not a finished run
    tables = {name: run.table(name) for name in run.observer_tables()}
    record = aggregate.run_record(run)
    weights = run.weights()
    if not keep_path:
        record["run_dir"] = None
    return TrainResult(
        spec=dict(run.spec), status=run.status, metrics=run.metrics, evaluation=run.evaluation, tables=tables,
        record=record, weights=weights, info=run.info, run_dir=path if keep_path else None,
    )


def train_one(
    config: Mapping[str, Any] | PathLike | None = None,
    *,
    condition: str = "fa",
    seed: int = 0,
    experiment: str = "main",
    mnist_root: PathLike | None = None,
    epochs: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    out_dir: PathLike | None = None,
    dataset: Any = None,
    threads: int | None = None,
    log: Callable[[str], Any] | None = print,
    **overrides: Any,
) -> TrainResult:
    """Train one run of ``experiment``/``condition`` with ``seed`` and return its tables.

    ``config`` is a config-like dict (any part of config.yaml's sections, e.g.
    ``{"training": {"batch_size": 100}}`` or a new entry of ``conditions``), merged key by key
    into the protocol of config.yaml (the schema's defaults); or the path of a YAML config,
    completed by those defaults as ``config.load_config`` does; or None, the protocol itself. ``experiment`` and
    ``condition`` name a run of that config as the results folder does (``main``/``fa``,
    ``terms``/``fa_fixed``, ``label_noise``/``fa_p40``, ``shadow``/``fa``, ...); the run spec is
    the workflow's (``config.run_specs``) with ``seed`` in place of the config's seeds. A condition
    defined under ``conditions`` but not listed in ``experiments.main`` can still be trained as
    ``main``.

    ``epochs`` shortens or lengthens the run; ``overrides`` set any other run-spec field
    (``eta``, ``wn``, ``gamma``, ``ibn``, ``batch_size``, ``reshuffle``, ``snapshot_every``,
    ``label_noise``, ``phases``, ``dtype``, ``device``, ...). MNIST is read from ``mnist_root``
    (default: the config's ``data.root``; downloaded there when ``data.download`` is true) and
    prepared in memory; ``train_subset`` / ``test_subset`` take the first N images of a split
    for this run only (default: the config's ``data`` settings, which the config's other
    sections are checked against). ``dataset`` (a ``data.PreparedData`` or the path of a
    prepared ``.npz``) skips the preparation. ``threads`` (default: ``training.threads``) is torch's thread count during the
    run, restored afterwards. ``log`` receives one progress line per epoch (None: silent).
    ``out_dir`` writes the run directory there (replacing one that exists); otherwise nothing is
    left on disk.
    """
    import torch

    from fa_analysis import data, train
    from fa_analysis.jobs import observers_of
    from fa_analysis.spec import RunSpec

    cfg = _config(config)
    spec = _run_spec(cfg, experiment, condition, seed, epochs, overrides)
    if dataset is None:
        settings = cfg["data"]
        root = settings["root"] if mnist_root is None else mnist_root
        dataset = prepared_mnist(
            Path(root).expanduser().resolve(), settings["download"], settings["image_size"],
            settings["train_subset"] if train_subset is None else train_subset,
            settings["test_subset"] if test_subset is None else test_subset,
        )
    elif isinstance(dataset, (str, Path)):
        dataset = data.load_prepared(dataset)
    labels = None
    if spec["label_noise"] > 0:  # the noisy labels of the data stage: one fixed draw per level
        labels = data.apply_label_noise(dataset.y_train, spec["label_noise"], cfg["data"]["label_noise_seed"])
    threads = cfg["training"]["threads"] if threads is None else threads
    run_spec = RunSpec.from_dict({**spec, "threads": threads})
    observers = observers_of(spec, true_labels=dataset.y_train)

    previous_threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="fa_analysis_run_") as scratch:
            target = Path(out_dir) if out_dir is not None else Path(scratch) / "run"
            train.train_run(run_spec, dataset, target, observers=observers, labels=labels,
                            log=log if log is not None else _silent)
            return _read_run_dir(target, keep_path=out_dir is not None)
    finally:
        torch.set_num_threads(previous_threads)


def _silent(_line: str) -> None:
    return None


def _config(config: Mapping[str, Any] | PathLike | None) -> dict:
    """A validated config from a config-like dict, a YAML path or None (the protocol)."""
    if config is None:
        return fa_config.load_config()
    if isinstance(config, (str, Path)):
        return fa_config.load_config(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict of config.yaml's sections, a YAML path or None, not {type(config).__name__}")
    return fa_config.validate(_merged(fa_config.load_config(), config))


def _merged(base: dict, changes: Mapping[str, Any]) -> dict:
    """``changes`` merged key by key into a copy of ``base``: mappings merge, other values replace."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _run_spec(cfg: dict, experiment: str, condition: str, seed: int, epochs: int | None,
              overrides: Mapping[str, Any]) -> dict:
    """The workflow's run spec of ``experiment``/``condition`` with ``seed``, ``epochs`` and ``overrides``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    specs = fa_config.run_specs(cfg)
    matching = [spec for (e, c, _), spec in specs.items() if (e, c) == (experiment, condition)]
    if matching:
        spec = copy.deepcopy(matching[0])
    elif experiment == "main" and condition in cfg["conditions"]:
        spec = fa_config._spec(cfg, "main", condition, condition, int(seed))
    else:
        known = sorted({f"{e}/{c}" for e, c, _ in specs})
        raise ValueError(
            f"no run {experiment}/{condition} in this config; the runs it defines are: {', '.join(known)} "
            "(or name any condition under 'conditions' with experiment='main')"
        )
    spec["seed"] = int(seed)
    accepted = set(SPEC_KEYS) - set(ID_COLUMNS)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise TypeError(f"unknown run-spec field(s) {unknown}; the fields train_one accepts are {sorted(accepted)}")
    if epochs is not None:
        if "phases" not in overrides and len(spec["phases"]) > 1:
            raise ValueError(
                f"{experiment}/{condition} trains in phases {spec['phases']}: pass phases=[...] (epochs per "
                "phase) instead of epochs"
            )
        spec["epochs"] = epochs
        spec["phases"] = [epochs]
    spec.update(copy.deepcopy(dict(overrides)))
    if "phases" in overrides and epochs is None:
        spec["epochs"] = sum(spec["phases"])
    return spec


@functools.lru_cache(maxsize=4)
def prepared_mnist(root: PathLike, download: bool, image_size: int = 15, train_subset: int | None = None,
                   test_subset: int | None = None):
    """MNIST prepared as the workflow's data stage prepares it (method §4), kept in memory.

    The data stage's own function writes the prepared set to a temporary file that is read back
    at once, so the two cannot differ. The last few sets stay cached while Python runs.
    """
    from fa_analysis import data

    with tempfile.TemporaryDirectory(prefix="fa_analysis_data_") as scratch:
        path = data.prepare_dataset(root, download, Path(scratch) / "mnist.npz", image_size=image_size,
                                    train_subset=train_subset, test_subset=test_subset)
        return data.load_prepared(path)


# --------------------------------------------------------------------------------------------
# A results folder
# --------------------------------------------------------------------------------------------


def load_results(results_dir: PathLike = "results") -> Results:
    """The workflow's results folder (config key ``results``) as a :class:`Results`; nothing is read yet."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder {root}: pass the folder the workflow wrote (config key 'results')")
    return Results(root)


class Results:
    """Tidy tables of one results folder, read on demand (docs/design.md has the layout).

    Every per-run table carries ``experiment``, ``condition`` and ``seed`` first; every aggregated
    table ``experiment`` and ``condition``. Filters take one value, a list, or None (all); column
    and measure filters also take shell-style patterns such as ``"angle_W_Bt_*"``.
    """

    def __init__(self, root: Path):
        self.root = root

    def __repr__(self) -> str:
        return f"Results({str(self.root)!r}: {len(self._run_dirs())} run directories)"

    # --- what is there

    def _run_dirs(self, experiment: Selection = None, condition: Selection = None,
                  seed: Selection = None) -> list[tuple[str, str, int, Path]]:
        """``(experiment, condition, seed, path)`` of every finished run under ``runs/``, sorted."""
        found = []
        for info in self.root.glob("runs/*/**/seed*/run.json"):  # a sweep's condition holds slashes
            path = info.parent
            match = re.fullmatch(r"seed(\d+)", path.name)
            parts = path.relative_to(self.root).parts
            if match is None or len(parts) < 4 or any(part.startswith(".") for part in parts):
                continue  # a staging directory of a job still running
            found.append((parts[1], "/".join(parts[2:-1]), int(match.group(1)), path))
        chosen = [row for row in found
                  if _selected(row[0], experiment) and _selected(row[1], condition) and _selected(row[2], seed)]
        return sorted(chosen, key=lambda row: row[:3])

    @property
    def experiments(self) -> dict[str, dict[str, list[int]]]:
        """``{experiment: {condition: [seeds]}}`` of the finished runs."""
        layout: dict[str, dict[str, list[int]]] = {}
        for experiment, condition, seed, _ in self._run_dirs():
            layout.setdefault(experiment, {}).setdefault(condition, []).append(seed)
        return layout

    # --- per run

    @functools.cached_property
    def runs(self) -> pd.DataFrame:
        """One row per run: identity, status, divergence, final test accuracy and loss, final angles.

        The columns of ``runs.csv`` (``aggregate.run_record``), read from the run directories; a
        folder holding only ``aggregated/`` gives its ``runs.csv`` files instead.
        """
        rows = [aggregate.run_record(read_run(path)) for *_, path in self._run_dirs()]
        if rows:
            table = pd.DataFrame(rows)
        else:
            files = sorted(p for p in self.root.glob("aggregated/*/**/runs.csv") if not _hidden(p, self.root))
            if not files:
                raise FileNotFoundError(f"{self.root} holds no finished run (runs/*/*/seed*/run.json) and no "
                                        "aggregated/*/*/runs.csv: is it the workflow's results folder?")
            table = pd.concat([pd.read_csv(path) for path in files], ignore_index=True)
        table = table.sort_values(list(ID_COLUMNS), kind="stable", ignore_index=True)
        for column in ("divergence_iteration", "final_epoch"):
            if column in table:
                table[column] = table[column].astype("Int64")
        return table

    def metrics(self, experiment: Selection = None, condition: Selection = None, seed: Selection = None,
                columns: Selection = None, long: bool = False) -> pd.DataFrame:
        """Per-iteration metrics of every selected run, one row per run and iteration (method §5).

        ``columns`` picks measures by name or pattern (``iteration`` and ``epoch`` always come
        along). ``long=True`` melts the measures into ``measure``/``value`` columns.
        """
        return self._per_run("metrics", experiment, condition, seed, columns, long, keys=aggregate.METRICS_KEYS)

    def evaluation(self, experiment: Selection = None, condition: Selection = None, seed: Selection = None) -> pd.DataFrame:
        """Test accuracy and loss of every selected run, one row per run and evaluation."""
        return self._per_run("evaluation", experiment, condition, seed, None, False, keys=aggregate.EVALUATION_KEYS)

    def table(self, name: str, experiment: Selection = None, condition: Selection = None, seed: Selection = None,
              columns: Selection = None) -> pd.DataFrame:
        """An observer's table (``terms_lag``, ``terms_time``, ``terms_similarity``, ``shadow``,
        ``remainder``; method §6) of every selected run that has it."""
        return self._per_run(name, experiment, condition, seed, columns, False, keys=None)

    def _per_run(self, name: str, experiment, condition, seed, columns, long: bool, keys) -> pd.DataFrame:
        runs = self._run_dirs(experiment, condition, seed)
        frames = []
        for e, c, s, path in runs:
            file = path / f"{name}.parquet"
            if not file.is_file():
                continue
            frame = _read_columns(file, columns, keys)
            frame.insert(0, "seed", s)
            frame.insert(0, "condition", c)
            frame.insert(0, "experiment", e)
            frames.append(frame)
        if not frames:
            raise LookupError(_nothing_found(f"{name}.parquet", "runs/", experiment, condition, seed, self.experiments))
        table = pd.concat(frames, ignore_index=True)
        if long:
            id_columns = [*ID_COLUMNS, *(k for k in (keys or ()) if k in table.columns)]
            table = table.melt(id_vars=id_columns, var_name="measure", value_name="value")
        return table

    # --- over seeds

    def aggregated(self, name: str = "metrics", experiment: Selection = None, condition: Selection = None,
                   measures: Selection = None) -> pd.DataFrame:
        """Mean, sd and n over seeds (``aggregated/{experiment}/{condition}/{name}.parquet``), tidy.

        ``name`` is ``metrics``, ``evaluation`` or an observer's table; ``measures`` filters the
        ``measure`` column by name or pattern. Columns: ``experiment, condition``, the table's
        keys (e.g. ``iteration, epoch``), ``measure, mean, sd, n``.
        """
        frames = []
        for path in sorted(self.root.glob(f"aggregated/*/**/{name}.parquet")):
            if _hidden(path, self.root):
                continue
            e, c = _experiment_condition(path.parent, self.root)
            if not (_selected(e, experiment) and _selected(c, condition)):
                continue
            frame = pd.read_parquet(path)
            if measures is not None:
                frame = frame[frame["measure"].isin(_matching(frame["measure"].unique(), measures))]
            frame.insert(0, "condition", c)
            frame.insert(0, "experiment", e)
            frames.append(frame)
        if not frames:
            raise LookupError(_nothing_found(f"{name}.parquet", "aggregated/", experiment, condition, None,
                                             self._aggregated_layout()))
        return pd.concat(frames, ignore_index=True)

    def _aggregated_layout(self) -> dict[str, dict[str, list]]:
        layout: dict[str, dict[str, list]] = {}
        for path in sorted(self.root.glob("aggregated/*/**/aggregate.json")):
            if not _hidden(path, self.root):
                experiment, condition = _experiment_condition(path.parent, self.root)
                layout.setdefault(experiment, {})[condition] = []
        return layout

    @property
    def summary(self) -> pd.DataFrame:
        """The summary table (``tables/summary.csv``): final test accuracy and angles per condition."""
        path = self.root / "tables" / "summary.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: make it with the workflow's summary rule "
                                    f"(snakemake {path}) or with fa_analysis.aggregate.summary_table")
        return pd.read_csv(path)

    # --- sweeps (method §12)

    @property
    def sweeps(self) -> list[str]:
        """The names of the sweeps whose tables are here (``sweeps/{name}/sweep.json``)."""
        return sorted(p.parent.name for p in self.root.glob("sweeps/*/sweep.json") if not _hidden(p, self.root))

    def sweep(self, name: str, points: bool = False) -> pd.DataFrame:
        """A sweep's table: one row per run (``runs.csv``: grid coordinates as their labels, status,
        accuracies, angles), or with ``points=True`` each point over seeds (``points.csv``: median,
        min, max, mean, sd and n per measure)."""
        from fa_analysis.sweep_table import read_points

        meta = self.root / "sweeps" / name / "sweep.json"
        if not meta.is_file():
            raise LookupError(f"no sweep {name!r} under {self.root / 'sweeps'} (there: {self.sweeps}): run the "
                              "workflow's sweep_table rule (snakemake sweeps)")
        fields = list(json.loads(meta.read_text())["fields"])
        if points:
            return read_points(meta.with_name("points.csv"), fields)
        table = pd.read_csv(meta.with_name("runs.csv"), dtype={field: str for field in fields})
        table["best_epoch"] = table["best_epoch"].astype("Int64")
        return table

    # --- open loop

    def open_loop(self) -> pd.DataFrame:
        """Every open-loop scenario (``open_loop/{scenario}.parquet``): ``scenario, repetition, iteration, angle``."""
        paths = [p for p in sorted(self.root.glob("open_loop/*.parquet")) if not p.stem.startswith("beta_wn")]
        return self._open_loop_tables(paths, "scenario", lambda path: path.stem)

    def beta_sweep(self) -> pd.DataFrame:
        """The open loop's beta sweep (``open_loop/beta_wn{0,1}.parquet``): ``wn, beta, repetition, iteration, angle``."""
        paths = sorted(self.root.glob("open_loop/beta_wn*.parquet"))
        return self._open_loop_tables(paths, "wn", lambda path: path.stem == "beta_wn1")

    # --- toy analyses

    def toy(self, name: str | None = None) -> pd.DataFrame | list[str]:
        """One toy table (``toy/{name}.parquet``, method §11), e.g. ``"depth"``; without a name, the names there."""
        names = sorted(p.stem for p in self.root.glob("toy/*.parquet") if not p.name.startswith("."))
        if name is None:
            return names
        if name not in names:
            raise LookupError(f"no toy table {name!r} under {self.root / 'toy'} (there: {names}): "
                              "run the workflow's toy rules")
        return pd.read_parquet(self.root / "toy" / f"{name}.parquet")

    def _open_loop_tables(self, paths: Sequence[Path], column: str, value: Callable[[Path], Any]) -> pd.DataFrame:
        paths = [p for p in paths if not p.name.startswith(".")]
        if not paths:
            raise LookupError(f"no open-loop tables under {self.root / 'open_loop'}: run the workflow's open_loop rules")
        frames = []
        for path in paths:
            frame = pd.read_parquet(path)
            frame.insert(0, column, value(path))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Selections and readers


def _as_list(selection: Selection) -> list:
    if selection is None:
        return []
    if isinstance(selection, (str, int, np.integer)):
        return [selection]
    return list(selection)


def _selected(value: Any, selection: Selection) -> bool:
    if selection is None:
        return True
    return any(value == wanted or (isinstance(wanted, str) and isinstance(value, str) and fnmatch.fnmatchcase(value, wanted))
               for wanted in _as_list(selection))


def _matching(names: Iterable[str], patterns: Selection) -> list[str]:
    """The names that match any of the patterns, in the names' order."""
    wanted = _as_list(patterns)
    return [name for name in names if any(fnmatch.fnmatchcase(str(name), str(p)) for p in wanted)]


def _read_columns(path: Path, columns: Selection, keys: Sequence[str] | None) -> pd.DataFrame:
    """A Parquet table, only the key columns and the columns matching ``columns`` when given."""
    if columns is None:
        return pd.read_parquet(path)
    import pyarrow.parquet as pq

    available = pq.read_schema(path).names
    chosen = _matching(available, columns)
    if not chosen:
        raise KeyError(f"no column of {path} matches {_as_list(columns)}; its columns are {available}")
    key_columns = [k for k in (keys or ()) if k in available and k not in chosen]
    return pd.read_parquet(path, columns=[*key_columns, *chosen])


def _experiment_condition(directory: Path, root: Path) -> tuple[str, str]:
    """``(experiment, condition)`` of ``aggregated/{experiment}/{condition}``; a sweep's condition holds slashes."""
    parts = directory.relative_to(root).parts
    return parts[1], "/".join(parts[2:])


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _nothing_found(file: str, where: str, experiment, condition, seed, layout: Mapping) -> str:
    asked = ", ".join(f"{name}={value!r}" for name, value in
                      (("experiment", experiment), ("condition", condition), ("seed", seed)) if value is not None)
    there = "; ".join(f"{e}: {', '.join(conditions)}" for e, conditions in layout.items()) or "nothing"
    return f"no {file} under {where} for {asked or 'any run'}; there are {there}"
