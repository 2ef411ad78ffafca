"""The tables of a sweep (method §12): one row per run, and the runs of each grid point over seeds.

- ``runs.csv``: per run its grid coordinates (one column per swept field, holding the label of its
  identity: ``none``, ``0.5``, ``3e-4``, ``100-100``), the base condition and its rule, the seed,
  the status (``outcome.run_status``: completed, collapsed or diverged), ``final_test_accuracy``,
  ``last_epochs_test_accuracy`` (:func:`last_epochs_accuracy`), ``best_test_accuracy`` and
  ``best_epoch``, the final ``angle_W_Bt_{l}`` and ``angle_W_Bt_all``, and the run directory;
- ``points.csv``: tidy, per point (base and coordinates) and ``measure`` (each of those numeric
  columns): ``median``, ``min``, ``max``, ``mean``, ``sd`` (sample, ddof 1) and ``n`` over the
  seeds whose value is finite, with ``n_runs``, ``n_diverged`` and ``n_collapsed`` of the point;
- ``sweep.json``: the grid (fields and their labels in the config's order), the points, the
  protocol and ``last_epochs``: what the figure reads to order its axis and lines.

Collapsed runs stay in (a collapse is what a sensitivity analysis looks for); a diverged run has no
final or last-epochs accuracy and drops out of ``n``. Read from the run directories; no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from fa_analysis import aggregate, artifacts
from fa_analysis.run_dir import read_run

PathLike = str | Path
#: The statistics over seeds of every measure of ``points.csv``.
STATISTICS = ("median", "min", "max", "mean", "sd", "n")
#: Run columns that are measures, besides the angles.
MEASURES = ("last_epochs_test_accuracy", "final_test_accuracy", "best_test_accuracy", "best_epoch")


def last_epochs_accuracy(evaluation: pd.DataFrame, epochs: int, last_epochs: int) -> float:
    """Mean test accuracy after each of the last ``last_epochs`` epochs of the last phase.

    The evaluation at epoch ``e`` is the state after ``e`` epochs; the rows taken are those of the
    last phase (the last code map) with ``epochs - last_epochs < e <= epochs``, and never the row
    at the phase's first epoch, taken before any training on its code map: under the label change
    (100 + 100 epochs) the mean over epochs 191..200, in the main protocol over 91..100. NaN when
    the run did not reach its last epoch with a finite accuracy.
    """
    phase = evaluation["phase"].max()
    rows = evaluation[evaluation["phase"] == phase]
    start = rows["epoch"].min()
    rows = rows[(rows["epoch"] > max(epochs - last_epochs, start)) & (rows["epoch"] <= epochs)]
    values = rows["test_accuracy"].to_numpy(dtype="float64")
    if not len(values) or rows["epoch"].max() != epochs or not np.isfinite(values).all():
        return math.nan
    return float(values.mean())


def runs_table(run_dirs: Iterable[PathLike], layout: Mapping, sweep: str,
               collapse_margin: float | None = None) -> pd.DataFrame:
    """One row per run of sweep ``sweep`` (``layout`` is its entry of ``sweeps.sweep_layout``)."""
    fields = list(layout["fields"])
    rows = []
    for path in run_dirs:
        run = read_run(path)
        record = aggregate.run_record(run, collapse_margin)
        point = layout["points"].get(record["condition"])
        if point is None:
            raise ValueError(f"{path} is run {record['condition']}, not a point of sweep {sweep!r}")
        completed = record["status"] != "diverged"
        rows.append({
            "sweep": sweep, "condition": record["condition"], "base": point["base"], "rule": point["rule"],
            **{field: point["labels"][field] for field in fields},
            "seed": record["seed"], "status": record["status"],
            "last_epochs_test_accuracy": (last_epochs_accuracy(run.evaluation, run.spec["epochs"],
                                                               layout["last_epochs"]) if completed else math.nan),
            "final_test_accuracy": record["final_test_accuracy"],
            "best_test_accuracy": record["best_test_accuracy"],
            "best_epoch": record["best_epoch"],
            **{key: value for key, value in record.items() if key.startswith("angle_W_Bt_")},
            "run_dir": record["run_dir"],
        })
    if not rows:
        raise ValueError(f"sweep {sweep!r}: no run directory given")
    table = pd.DataFrame(rows)
    order = {condition: i for i, condition in enumerate(layout["points"])}
    table = table.sort_values(["condition", "seed"], key=lambda c: c.map(order) if c.name == "condition" else c,
                              kind="stable", ignore_index=True)
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table


def points_table(runs: pd.DataFrame, fields: Iterable[str]) -> pd.DataFrame:
    """Median, min, max, mean, sd and n over the seeds of each point, per measure (tidy)."""
    keys = ["sweep", "condition", "base", "rule", *fields]
    measures = [*MEASURES, *(c for c in runs.columns if c.startswith("angle_W_Bt_"))]
    rows = []
    for point, group in runs.groupby("condition", sort=False):
        identity = {key: group[key].iloc[0] for key in keys}
        counts = {"n_runs": len(group), "n_diverged": int((group["status"] == "diverged").sum()),
                  "n_collapsed": int((group["status"] == "collapsed").sum())}
        for measure in measures:
            values = group[measure].to_numpy(dtype="float64")
            values = values[np.isfinite(values)]
            stats = dict.fromkeys(STATISTICS[:-1], math.nan)
            if len(values):
                stats.update(median=float(np.median(values)), min=float(values.min()), max=float(values.max()),
                             mean=float(values.mean()))
                stats["sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            rows.append({**identity, "measure": measure, **stats, "n": int(len(values)), **counts})
    return pd.DataFrame(rows)


def sweep_tables(run_dirs: Iterable[PathLike], layout: Mapping, sweep: str, out_runs: PathLike,
                 out_points: PathLike, out_meta: PathLike, collapse_margin: float | None = None) -> pd.DataFrame:
    """Write ``runs.csv``, ``points.csv`` and ``sweep.json`` of one sweep (each atomically); returns the runs."""
    runs = runs_table(run_dirs, layout, sweep, collapse_margin)
    points = points_table(runs, layout["fields"])
    artifacts.atomic_write_bytes(Path(out_runs), runs.to_csv(index=False).encode())
    artifacts.atomic_write_bytes(Path(out_points), points.to_csv(index=False).encode())
    artifacts.atomic_write_json(Path(out_meta), {
        "sweep": sweep, **{key: layout[key] for key in ("protocol", "fields", "points", "seeds", "last_epochs")},
        "n_runs": int(len(runs)), "n_diverged": int((runs["status"] == "diverged").sum()),
        "n_collapsed": int((runs["status"] == "collapsed").sum()),
        "statistics": "median, min, max, mean and sample sd (ddof=1) over the seeds finite at each point; n counts them",
        "code_version": artifacts.code_version(),
    })
    return runs


def read_points(path: PathLike, fields: Iterable[str]) -> pd.DataFrame:
    """``points.csv`` with the grid columns as the labels they are (``0.5``, not 0.5; ``none``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: make it with the workflow's sweep_table rule")
    return pd.read_csv(path, dtype={field: str for field in fields})  # no label is one of pandas' NA strings
