"""What every figure of method §9 shares: colours, labels, bands, panels, legends and saving.

Conventions of every figure:

- one colour per condition everywhere (:data:`PALETTE`), one per open-loop scenario, alignment-term
  variant and shadow series (:data:`SCENARIO_COLORS`, :data:`VARIANT_COLORS`, :data:`SERIES_COLORS`);
- layers as panels, titled with the matrix they concern (``W_l``);
- a line is the mean over seeds (or open-loop repetitions), the band around it mean ± sd
  (sample sd, see :mod:`fa_analysis.aggregate`); a band needs at least two seeds;
- angles in degrees with a dotted line at 90° (no alignment), time in iterations (minibatches)
  or epochs as the axis says;
- a figure draws what exists: the legend says how many runs of a condition diverged (their
  curves stop where they did), and a condition or variant with nothing left to draw is listed
  with the reason instead of a line.

Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fa_analysis import aggregate  # noqa: E402

PathLike = str | Path

#: One colour per learning condition, the same in every figure (Okabe-Ito, colour-blind safe):
#: BP in blues, FA in oranges / reds / purple.
PALETTE = {
    "bp": "#0072B2",
    "bp_wn": "#56B4E9",
    "fa": "#E69F00",
    "fa_wn": "#D55E00",
    "fa_wn_noibn": "#CC79A7",
}
#: Colours for conditions a config adds (Paul Tol's muted scheme, none of them in PALETTE).
EXTRA_COLORS = ("#117733", "#332288", "#44AA99", "#999933", "#882255", "#AA4499", "#661100", "#6699CC", "#888888")
#: Legend labels of the protocol's conditions (method §5.1), plain names; a condition a config adds
#: is labelled by its name (and its settings, :func:`condition_label`).
CONDITION_LABELS = {
    "bp": "BP",
    "bp_wn": "BP + WN",
    "fa": "FA",
    "fa_wn": "FA + WN (IBN)",
    "fa_wn_noibn": "FA + WN, no IBN",
    "dfa": "DFA",
}
#: Open-loop scenarios (method §7).
SCENARIO_COLORS = {"auto": "#009E73", "cross": "#882255", "both": "#332288", "none": "#7F7F7F"}
SCENARIO_LABELS = {
    "auto": "auto-correlated (L₀, δ₂ fixed)",
    "cross": "cross-correlated (L₀ = δ₂ fresh)",
    "both": "both (L₀ = δ₂ fixed)",
    "none": "none (fresh, independent)",
}
#: Alignment-term variants (method §6): minibatch order and labels of the FA runs.
VARIANT_COLORS = {"fixed": "#009E73", "reshuffle": "#882255", "wrong_labels": "#7F7F7F"}
VARIANT_LABELS = {"fixed": "fixed order", "reshuffle": "reshuffled each epoch", "wrong_labels": "100 % wrong labels"}
#: Shadow-weight series (method §6); the real run is FA and keeps FA's colour.
SERIES_COLORS = {"real": PALETTE["fa"], "linearised": "#117733", "random_b": "#332288", "random_b_vs_B": "#999999"}
#: The reference point(s) of the trajectory embedding.
REFERENCE_COLOR = "#000000"

ANGLE_LABEL = "angle (degrees)"


# ---------------------------------------------------------------------------------------------
# Curves, tables and files
# ---------------------------------------------------------------------------------------------


def causal_moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Causal moving average: ``y[i]`` is the mean of the finite ``x[j]`` for ``i-window < j <= i``.

    The first points average over what exists (``y[0] = x[0]``); no point sees the future,
    so a step at ``i`` changes only ``y[i:]``. NaN where the window holds no finite value.
    """
    if window < 1:
        raise ValueError(f"moving-average window must be >= 1 (config figures.moving_average), got {window}")
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    upper = np.arange(1, len(x) + 1)
    lower = np.maximum(upper - window, 0)
    total, count = sums[upper] - sums[lower], counts[upper] - counts[lower]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_mean_sd(ax, x, mean, sd, *, color, label=None, linestyle="-", alpha=0.22,
                 linewidth=1.4) -> tuple[Line2D, PolyCollection]:
    """Draw the mean as a line and mean ± sd as a band of the same colour; return (line, band)."""
    x, mean, sd = (np.asarray(a, dtype=np.float64) for a in (x, mean, sd))
    (line,) = ax.plot(x, mean, color=color, label=label, linestyle=linestyle, linewidth=linewidth)
    band = ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=alpha, linewidth=0, rasterized=True)
    return line, band


def measure_curve(table: pd.DataFrame, measure: str, x: str = "iteration", **where) -> pd.DataFrame:
    """Rows of a tidy aggregated table for one measure (and key values ``where``), sorted by ``x``."""
    if "measure" not in table.columns:
        raise KeyError(f"not an aggregated table (no 'measure' column): columns {list(table.columns)}")
    selected = table[table["measure"] == measure]
    for key, value in where.items():
        selected = selected[selected[key] == value]
    if selected.empty:
        available = sorted(table["measure"].unique())
        raise KeyError(f"measure '{measure}' with {where or 'no filter'} is not in the table; "
                       f"it has {available[:12]}{' ...' if len(available) > 12 else ''}")
    return selected.sort_values(x, kind="stable")


def save_figure(fig, out_stem: PathLike, formats: Sequence[str]) -> list[Path]:
    """Write ``{out_stem}.{format}`` for every format, each atomically (temp file + rename)."""
    if not formats:
        raise ValueError("no figure format given (config figures.formats, e.g. [png, pdf])")
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_stem.with_name(f"{out_stem.name}.{fmt}")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; figures are shared
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(path)
    plt.close(fig)
    return paths


def read_table(directory: PathLike, name: str) -> pd.DataFrame:
    """``{directory}/{name}.parquet`` with an error naming the path and the step that makes it."""
    path = Path(directory) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: aggregate that condition first (aggregate_condition)")
    return pd.read_parquet(path)


def layer_indices(table: pd.DataFrame, prefix: str) -> list[int]:
    """The layer indices ``l`` of measures named ``{prefix}{l}`` in a tidy table, sorted."""
    layers = []
    for name in table["measure"].unique():
        suffix = str(name).removeprefix(prefix)
        if str(name).startswith(prefix) and suffix.isdigit():
            layers.append(int(suffix))
    if not layers:
        raise KeyError(f"no measure named '{prefix}<layer>' in the table")
    return sorted(layers)


def per_layer_conditions(aggregated: Mapping[str, PathLike], prefix: str):
    """Metrics of every condition and the layers ``l`` that all of them have a ``{prefix}{l}`` for."""
    tables = {condition: read_table(directory, "metrics") for condition, directory in aggregated.items()}
    layers = sorted(set.intersection(*(set(layer_indices(t, prefix)) for t in tables.values())))
    return tables, layers


# ---------------------------------------------------------------------------------------------
# Panels, legends, ticks
# ---------------------------------------------------------------------------------------------


def set_style():
    """The look of every figure: seaborn's paper context, no top or right spines, no legend frames."""
    sns.set_theme(context="paper", style="ticks", font_scale=1.05)
    plt.rcParams.update({"axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
                         "pdf.fonttype": 42, "savefig.dpi": 150})


def panels(n: int, *, ncols: int | None = None, width: float = 3.2, height: float = 2.7,
           sharex=True, sharey=True):
    """A figure of ``n`` panels in rows of ``ncols`` (default: one row), each ``width`` x ``height`` inches."""
    set_style()
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.5),
                             sharex=sharex, sharey=sharey, squeeze=False, constrained_layout=True)
    for ax in axes.ravel()[n:]:
        ax.remove()
    return fig, axes.ravel()[:n]


def legend_below(fig, axes, ncol: int | None = None, handles=None, labels=None):
    """One legend for the whole figure, below its panels (default: the first panel's lines)."""
    if handles is None:
        handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(labels), 5))


def integer_ticks(ax, axis: str = "x"):
    """Integer tick labels (epochs, lags)."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def chance_line(ax, y: float = 90.0):
    """The dotted line of no alignment (90°)."""
    ax.axhline(y, color="0.5", linestyle=":", linewidth=0.9, zorder=0)


def note_figure(title: str, note: str, out_stem: PathLike, formats: Sequence[str]) -> list[Path]:
    """A figure with nothing to draw but the reason why (e.g. every run diverged before it)."""
    fig, (ax,) = panels(1, width=6.0, height=2.0)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    return save_figure(fig, out_stem, formats)


# ---------------------------------------------------------------------------------------------
# Conditions: colours, labels, divergence
# ---------------------------------------------------------------------------------------------


def condition_color(condition: str) -> str:
    """The protocol's conditions keep their colours (:data:`PALETTE`); any other name gets one of
    :data:`EXTRA_COLORS` by a stable hash of the name, the same in every figure and every run."""
    if condition in PALETTE:
        return PALETTE[condition]
    return EXTRA_COLORS[zlib.crc32(condition.encode()) % len(EXTRA_COLORS)]


def condition_label(condition: str, directory: PathLike | None = None) -> str:
    """The protocol's conditions by their usual names (:data:`CONDITION_LABELS`); any other by its
    name and the settings its runs shared (``aggregate.json`` of ``directory``), e.g.
    ``fa_half_eta: FA, η = 0.00025``."""
    if condition in CONDITION_LABELS or directory is None:
        return CONDITION_LABELS.get(condition, condition)
    try:
        settings = json.loads((Path(directory) / "aggregate.json").read_text())["settings"]
        label = f"{condition}: {settings['rule'].upper()}, η = {settings['eta']:g}"
    except (OSError, KeyError, ValueError, TypeError):
        return condition
    if settings.get("wn"):
        label += f", WN (γ = {settings['gamma']:g}{', IBN' if settings.get('ibn') else ''})"
    return label


def settings_label(directory: PathLike, condition: str) -> str:
    """A legend label from the settings the runs actually used (recorded by the aggregation in
    ``aggregate.json``), e.g. ``FA + WN (γ = 0.6)``: experiments can override a condition's
    defaults, so its name alone may mislead. Falls back to the condition's usual label when the
    runs did not share a rule."""
    try:
        settings = json.loads((Path(directory) / "aggregate.json").read_text())["settings"]
        label = settings["rule"].upper()
    except (OSError, KeyError, ValueError, TypeError):
        return condition_label(condition)
    if settings.get("wn"):
        label += f" + WN (γ = {settings['gamma']:g}{', IBN' if settings.get('ibn') else ''})"
    return label


def divergence_note(directory: PathLike) -> str:
    """How many runs of an aggregated condition diverged or collapsed (method §5.6, from its runs.csv),
    e.g. ``all 3 runs diverged`` or ``1 of 10 runs collapsed``; empty when none did."""
    status = aggregate.read_runs_csv(directory)["status"]
    total = len(status)
    notes = []
    for outcome in ("diverged", "collapsed"):
        count = int((status == outcome).sum())
        if count == 0:
            continue
        if count < total:
            notes.append(f"{count} of {total} runs {outcome}")
        else:
            notes.append(f"all {total} runs {outcome}" if total > 1 else f"its run {outcome}")
    return ", ".join(notes)


def with_divergence(label: str, directory: PathLike) -> str:
    """``label`` followed by the condition's :func:`divergence_note`, if any."""
    note = divergence_note(directory)
    return f"{label} ({note})" if note else label


def condition_legend(condition: str, directory: PathLike) -> str:
    """A condition's legend entry: its :func:`condition_label` and how many of its runs diverged."""
    return with_divergence(condition_label(condition, directory), directory)
