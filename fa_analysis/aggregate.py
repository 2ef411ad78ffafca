"""Mean and sd over seeds, divergence bookkeeping and the summary table (method §5, §8 and §9).

Every figure of method §9 is drawn from the tables written here, never from single runs.

Aggregated tables are *tidy*: one row per key (e.g. ``iteration``) and ``measure`` (a column name
of the per-run table, e.g. ``angle_W_Bt_2``), with

- ``mean``: the mean over the members (seeds, or open-loop repetitions) whose value is finite there,
- ``sd``: their sample standard deviation (``ddof = 1``; NaN where ``n < 2``),
- ``n``: how many members contributed.

A diverged run is never silently dropped: its rows count until it diverged (its non-finite values
are left out, so ``n`` falls), and ``runs.csv`` lists every run with its status (``completed``,
``diverged``, or ``collapsed``: finished, but far below its own best, ``outcome.run_status``), the
divergence iteration and reason, its final test accuracy (empty for a diverged run, which never
finished), its last finite evaluation, its best evaluation and its final angles ``∠(W_l, B_lᵀ)``.
The tables over seeds keep every run (a collapse is part of the curve); the summary's means leave
out the diverged and the collapsed runs and count both.

Entry points (the workflow calls these; every path argument may be a ``str`` or a ``Path``):

- :func:`aggregate_condition` -- run directories of one ``{experiment}/{condition}`` -> an
  aggregated directory (``metrics.parquet``, ``evaluation.parquet``, ``runs.csv`` and the
  observers' tables, e.g. ``terms_lag.parquet``, ``shadow.parquet``);
- :func:`open_loop_curve` -- one open-loop table -> mean and sd over repetitions (what its figures draw)
  (:func:`open_loop_curve` for one measure, as the open-loop figures draw it);
- :func:`summary_table` -- aggregated condition directories -> ``summary.csv`` and ``summary.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fa_analysis import artifacts, measures, outcome
from fa_analysis.run_dir import Run, read_run

PathLike = str | Path

#: Columns that name the member a row belongs to: they are averaged over, never grouped by.
MEMBER_COLUMNS = ("seed", "repetition")

#: Group-by keys of the engine's own tables (docs/design.md); other tables' keys are inferred.
METRICS_KEYS = ("iteration", "epoch")
EVALUATION_KEYS = ("epoch", "iteration", "phase")


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def final_angles(run: Run) -> tuple[dict[str, float], str]:
    """Final ``∠(W_l, B_lᵀ)`` in degrees for l = 1..d-1 and over those layers concatenated, and the source.

    ``B_l`` is the feedback in use at the final state: ``B{l}_final`` of a rule whose feedback
    changes (method §1.6), the fixed ``B{l}`` otherwise.

    From ``weights.npz`` (the state after the last step, source ``"weights"``) when the run
    completed and its ``W{l}_final`` and ``B{l}`` are finite; otherwise -- no weights, or a
    diverged run, whose final weights come after the step that blew up -- from the last metrics
    row where every angle is finite (the state before that step, source ``"metrics@{k}"``); NaN
    when there is none.
    """
    d = run.depth
    names = [f"angle_W_Bt_{l}" for l in range(1, d)] + ["angle_W_Bt_all"]
    weights = run.weights() if run.status != "diverged" else {}
    W = {l: weights.get(f"W{l}_final") for l in range(1, d)}
    B = {l: weights.get(f"B{l}_final", weights.get(f"B{l}")) for l in range(1, d)}  # the feedback in use at the end
    if all(W[l] is not None and B[l] is not None for l in range(1, d)):
        W_l = [W[l] for l in range(1, d)]
        Bt_l = [np.asarray(B[l]).T for l in range(1, d)]
        angles = {f"angle_W_Bt_{l}": measures.angle_deg_arrays([Wl], [Btl]) for l, Wl, Btl in zip(range(1, d), W_l, Bt_l)}
        angles["angle_W_Bt_all"] = measures.angle_deg_arrays(W_l, Bt_l)
        if all(np.isfinite(list(angles.values()))):
            return angles, "weights"
    metrics = run.metrics
    present = [name for name in names if name in metrics.columns]
    finite = metrics[np.isfinite(metrics[present]).all(axis=1)] if present else metrics.iloc[:0]
    if not len(finite):
        return {name: math.nan for name in names}, "none"
    last = finite.iloc[-1]
    angles = {name: float(last[name]) if name in last else math.nan for name in names}
    return angles, f"metrics@{int(last['iteration'])}"


def run_record(run: Run, collapse_margin: float | None = None) -> dict:
    """One row of ``runs.csv``: identity, status, divergence, test accuracy and angles.

    ``status`` is ``outcome.run_status`` with ``collapse_margin`` (None: the schema's
    ``analysis.collapse_margin``). ``final_epoch``, ``final_test_accuracy`` and ``final_test_loss``
    are those of the evaluation after the last epoch, empty for a diverged run (it has none).
    ``last_finite_epoch``, ``last_finite_test_accuracy`` and ``last_finite_test_loss`` are those of
    the last evaluation with finite values: the final one of a completed run, the last before a
    diverged run blew up. ``best_epoch`` and ``best_test_accuracy`` are those of the run's best
    evaluation, and ``accuracy_drop`` the largest fall from a phase's best to its end (empty for a
    diverged run). ``angles_from`` says where the final angles come from (see :func:`final_angles`).
    """
    spec = run.spec
    divergence = run.info.get("divergence") or {}
    evaluation = run.evaluation
    finite_eval = evaluation[np.isfinite(evaluation[["test_accuracy", "test_loss"]]).all(axis=1)]
    last_finite = finite_eval.iloc[-1] if len(finite_eval) else None
    final = last_finite if run.status == "completed" else None
    angles, angles_from = final_angles(run)
    margin = outcome.default_margin() if collapse_margin is None else collapse_margin
    best_accuracy, best_epoch = outcome.best_evaluation(evaluation)

    def evaluated(row, column):
        return math.nan if row is None else (int(row[column]) if column == "epoch" else float(row[column]))

    return {
        "experiment": spec.get("experiment"),
        "condition": spec.get("condition"),
        "seed": run.seed,
        "status": outcome.run_status(run.status, evaluation, margin),
        "divergence_iteration": divergence.get("iteration"),
        "divergence_reason": divergence.get("reason"),
        "iterations_recorded": int(len(run.metrics)),
        **{f"final_{column}": evaluated(final, column) for column in ("epoch", "test_accuracy", "test_loss")},
        **{f"last_finite_{column}": evaluated(last_finite, column)
           for column in ("epoch", "test_accuracy", "test_loss")},
        "best_epoch": math.nan if best_epoch is None else best_epoch,
        "best_test_accuracy": best_accuracy,
        "accuracy_drop": outcome.accuracy_drop(evaluation) if run.status == "completed" else math.nan,
        **angles,
        "angles_from": angles_from,
        "run_dir": str(run.path),
    }


# ---------------------------------------------------------------------------------------------
# Mean and sd over members
# ---------------------------------------------------------------------------------------------


def infer_keys(table: pd.DataFrame) -> list[str]:
    """Group-by keys of a per-member table: its integer, boolean and text columns except members.

    Float columns are measures. Tables whose keys are floats (e.g. the β of a sweep) pass ``keys``.
    """
    return [
        column
        for column in table.columns
        if column not in MEMBER_COLUMNS and not pd.api.types.is_float_dtype(table[column])
    ]


def mean_sd(
    tables: Sequence[pd.DataFrame],
    keys: Sequence[str] | None = None,
    measures: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Tidy mean, sd and n over members (one table per seed or repetition), per key and measure.

    Non-finite values (a diverged run's NaN / inf) are left out, so ``n`` counts the members that
    are finite at that key. ``sd`` is the sample sd (ddof = 1), NaN where ``n < 2``.
    Returns columns ``*keys, measure, mean, sd, n`` sorted by keys and measure.
    """
    if not tables:
        raise ValueError("mean_sd needs at least one table (got none: no run or repetition to average)")
    keys = list(infer_keys(tables[0]) if keys is None else keys)
    if measures is None:
        measures = [
            column
            for column in tables[0].columns
            if column not in keys and column not in MEMBER_COLUMNS and pd.api.types.is_numeric_dtype(tables[0][column])
        ]
    measures = list(measures)
    for i, table in enumerate(tables):
        missing = [column for column in [*keys, *measures] if column not in table.columns]
        if missing:
            raise KeyError(f"table {i} lacks the columns {missing} that table 0 has")
    long = pd.concat(
        [table[[*keys, *measures]].melt(id_vars=keys, var_name="measure", value_name="value") for table in tables],
        ignore_index=True,
    )
    long["value"] = long["value"].astype("float64")
    long = long[np.isfinite(long["value"].to_numpy())]
    grouped = long.groupby([*keys, "measure"], sort=True, observed=True)["value"]
    out = grouped.agg(mean="mean", sd="std", n="count").reset_index()
    out["n"] = out["n"].astype("int64")
    return out


def split_members(table: pd.DataFrame, member: str) -> list[pd.DataFrame]:
    """Split one table holding every member (e.g. all repetitions) into one table per member."""
    if member not in table.columns:
        raise KeyError(f"column '{member}' is missing; the table has {list(table.columns)}")
    return [part.drop(columns=member) for _, part in table.groupby(member, sort=True)]


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


#: Run-spec fields recorded in ``aggregate.json`` when every run of the condition shares them.
SETTING_KEYS = ("rule", "eta", "wn", "gamma", "ibn", "label_smoothing", "sizes", "bias", "label_noise", "epochs",
                "batch_size")


def aggregate_condition(run_dirs: Iterable[PathLike], out_dir: PathLike,
                        collapse_margin: float | None = None) -> dict[str, Path]:
    """Aggregate the runs of one ``{experiment}/{condition}`` over seeds into ``out_dir``.

    Writes ``metrics.parquet`` (keys iteration, epoch), ``evaluation.parquet`` (keys epoch,
    iteration, phase), one aggregated table per observer table the runs share (``terms_lag``,
    ``shadow``, ...; keys inferred from the column types) and ``runs.csv`` (every run, one row,
    diverged and collapsed ones included; ``collapse_margin`` is config
    ``analysis.collapse_margin``, None for the schema's), plus ``aggregate.json`` (the runs used,
    code version). Returns ``{name: path}`` of the files written.
    """
    margin = outcome.check_margin(outcome.default_margin() if collapse_margin is None else collapse_margin)
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("aggregate_condition: run_dirs is empty (the condition has no seeds in the config)")
    runs = [read_run(p) for p in run_dirs]
    conditions = {(r.spec.get("experiment"), r.spec.get("condition")) for r in runs}
    if len(conditions) > 1:
        raise ValueError(f"aggregate_condition got runs of several conditions {sorted(map(str, conditions))}: "
                         "aggregate one experiment/condition at a time")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def write(name: str, table: pd.DataFrame) -> None:
        path = out_dir / f"{name}.parquet"
        artifacts.atomic_write_parquet(path, table)
        written[name] = path

    write("metrics", mean_sd([r.metrics for r in runs], keys=METRICS_KEYS))
    write("evaluation", mean_sd([r.evaluation for r in runs], keys=EVALUATION_KEYS,
                                measures=["test_accuracy", "test_loss"]))
    observer_tables = sorted({name for r in runs for name in r.observer_tables()})
    for name in observer_tables:
        tables = [t for t in (r.table(name) for r in runs) if t is not None]
        write(name, mean_sd(tables))

    records = pd.DataFrame([run_record(r, margin) for r in runs]).sort_values("seed", kind="stable")
    for column in ("divergence_iteration", "final_epoch", "last_finite_epoch", "best_epoch"):  # integers with gaps
        records[column] = records[column].astype("Int64")
    runs_csv = out_dir / "runs.csv"
    artifacts.atomic_write_bytes(runs_csv, records.to_csv(index=False).encode())
    written["runs"] = runs_csv

    meta = {
        "experiment": runs[0].spec.get("experiment"),
        "condition": runs[0].spec.get("condition"),
        "runs": [str(r.path) for r in runs],
        "seeds": [r.seed for r in runs],
        "n_diverged": int((records["status"] == "diverged").sum()),
        "n_collapsed": int((records["status"] == "collapsed").sum()),
        "collapse_margin": margin,
        "observer_tables": observer_tables,
        # the learning settings every run shares (figures label conditions outside the protocol with them)
        "settings": {key: runs[0].spec[key] for key in SETTING_KEYS
                     if key in runs[0].spec and all(r.spec.get(key) == runs[0].spec[key] for r in runs)},
        "statistic": "mean and sample sd (ddof=1) over the runs finite at each key; n counts them",
        "code_version": artifacts.code_version(),
    }
    meta_path = out_dir / "aggregate.json"
    artifacts.atomic_write_json(meta_path, meta)
    written["aggregate"] = meta_path
    return written


def open_loop_curve(table: pd.DataFrame, keys: Sequence[str], measure: str = "angle") -> pd.DataFrame:
    """Mean, sd, n of ``measure`` over the ``repetition`` column of an open-loop table, per ``keys``
    (columns ``*keys, mean, sd, n``): what the open-loop figures draw."""
    aggregated = mean_sd(split_members(table, "repetition"), keys=keys, measures=[measure])
    return aggregated.drop(columns="measure")


def read_runs_csv(aggregated_dir: PathLike) -> pd.DataFrame:
    """``runs.csv`` of one aggregated condition directory, with a clear error when missing."""
    path = Path(aggregated_dir) / "runs.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run aggregate_condition for {Path(aggregated_dir)} first")
    return pd.read_csv(path)


def summary_table(aggregated_dirs: Iterable[PathLike], out_csv: PathLike, out_md: PathLike) -> pd.DataFrame:
    """Final test accuracy and final ``∠(W_l, B_lᵀ)`` per condition, mean ± sd (method §9.9).

    One row per ``experiment/condition`` (one aggregated directory each). Means and sds are over
    the *completed* runs (``n_completed``); ``n_seeds`` counts every run, ``n_diverged`` the
    diverged and ``n_collapsed`` the collapsed ones (method §5.6), whose own values stay visible in
    that condition's ``runs.csv``. Conditions of different depths have different ``angle_W_Bt_{l}``
    columns: each layer's columns are there for every condition, empty where it has no such layer.
    Writes a numeric CSV and a Markdown table (accuracy in %, angles in degrees).
    """
    rows = []
    for directory in aggregated_dirs:
        runs = read_runs_csv(directory)
        completed = runs[runs["status"] == "completed"]
        row = {
            "experiment": runs["experiment"].iloc[0],
            "condition": runs["condition"].iloc[0],
            "n_seeds": int(len(runs)),
            "n_completed": int(len(completed)),
            "n_diverged": int((runs["status"] == "diverged").sum()),
            "n_collapsed": int((runs["status"] == "collapsed").sum()),
        }
        value_columns = ["final_test_accuracy"] + [c for c in runs.columns if c.startswith("angle_W_Bt_")]
        for column in value_columns:
            values = completed[column].to_numpy(dtype="float64")
            values = values[np.isfinite(values)]
            row[f"{column}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{column}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    if not rows:
        raise ValueError("summary_table: no aggregated directories given")
    table = pd.DataFrame(rows)
    table = table[sorted(table.columns, key=lambda column: _column_order(column, list(table.columns)))]
    artifacts.atomic_write_bytes(Path(out_csv), table.to_csv(index=False).encode())
    artifacts.atomic_write_bytes(Path(out_md), summary_markdown(table).encode())
    return table


def _column_order(column: str, columns: list[str]) -> tuple:
    """Summary columns in order: identity and counts, accuracy, then the layers' angles by ``l``, ``all`` last."""
    if not column.startswith("angle_W_Bt_"):
        return (0, columns.index(column))
    layer, _, statistic = column.removeprefix("angle_W_Bt_").rpartition("_")
    return (1, math.inf if layer == "all" else int(layer), statistic)


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table: ``mean ± sd``, accuracy in %, angles in degrees."""
    angle_columns = [c[: -len("_mean")] for c in table.columns if c.startswith("angle_W_Bt_") and c.endswith("_mean")]

    def layer_label(column: str) -> str:
        layer = column.removeprefix("angle_W_Bt_")
        return "∠(W, Bᵀ) all (°)" if layer == "all" else f"∠(W_{layer}, B_{layer}ᵀ) (°)"

    def cell(row: Mapping, column: str, scale: float, digits: int) -> str:
        mean, sd = row[f"{column}_mean"] * scale, row[f"{column}_sd"] * scale
        if not np.isfinite(mean):
            return "–"
        return f"{mean:.{digits}f} ± {sd:.{digits}f}" if np.isfinite(sd) else f"{mean:.{digits}f}"

    header = ["experiment", "condition", "seeds", "diverged", "collapsed", "test accuracy (%)"]
    header += [layer_label(c) for c in angle_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for _, row in table.iterrows():
        cells = [str(row["experiment"]), str(row["condition"]), str(row["n_seeds"]), str(row["n_diverged"]),
                 str(row["n_collapsed"]), cell(row, "final_test_accuracy", 100.0, 1)]
        cells += [cell(row, c, 1.0, 1) for c in angle_columns]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nMean ± sd over the completed runs of each condition (sample sd); `diverged` runs and "
            "`collapsed` runs (finished, but ending far below their own best accuracy) are excluded from "
            "the means and listed in that condition's runs.csv; – marks no value (no completed run, or a "
            "layer the condition does not have).\n")
    return "\n".join(lines) + "\n" + note
