"""Every figure of method §9, drawn from aggregated results (mean ± sd shading over seeds).

One public ``plot_*`` function per figure name of the output layout; each takes the paths of the
aggregated tables it needs, an output stem (``figures/{name}``, no suffix) and the formats
(config ``figures.formats``), writes ``{stem}.{format}`` atomically and returns the paths.

Conventions shared by every figure:

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
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

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
#: Legend labels of the protocol's conditions; another condition is labelled by its name.
CONDITION_LABELS = {
    "bp": "BP",
    "bp_wn": "BP + WN",
    "fa": "FA",
    "fa_wn": "FA + WN (IBN)",
    "fa_wn_noibn": "FA + WN, no IBN",
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
# Building blocks (tested on their own)
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


def figure_inputs(name: str, inputs: dict[str, str], groups: Mapping[str, Sequence] | None = None):
    """Reshape a figure rule's named inputs (``cli.figure_job``) into what ``plot_{name}`` takes.

    ``groups`` maps an input name to its group keys where the figure groups its inputs: ``[wn]``
    (the beta sweep: ``{wn: path}``), ``[condition, level]`` (label noise: ``{condition: {level:
    path}}``). An input without group keys there is an error naming it.
    """
    if name in ("open_loop_beta", "label_noise"):
        groups = groups or {}
        missing = sorted(set(inputs) - set(groups))
        if missing:
            raise ValueError(f"figure {name}: no group keys for the input(s) {missing} (figures.smk, FIGURE_GROUPS)")
        if name == "open_loop_beta":
            return {bool(groups[key][0]): path for key, path in inputs.items()}
        by_condition: dict[str, dict[int, str]] = {}
        for key, path in inputs.items():
            condition, level = groups[key]
            by_condition.setdefault(condition, {})[int(level)] = path
        return by_condition
    if len(inputs) == 1 and name in ("shadow_linearised", "shadow_random_b", "remainder", "trajectory_pca", "trajectory_umap"):
        return next(iter(inputs.values()))
    return inputs


def _style():
    sns.set_theme(context="paper", style="ticks", font_scale=1.05)
    plt.rcParams.update({"axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
                         "pdf.fonttype": 42, "savefig.dpi": 150})


def _panels(n: int, *, ncols: int | None = None, width: float = 3.2, height: float = 2.7,
            sharex=True, sharey=True):
    _style()
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.5),
                             sharex=sharex, sharey=sharey, squeeze=False, constrained_layout=True)
    for ax in axes.ravel()[n:]:
        ax.remove()
    return fig, axes.ravel()[:n]


def _layers(table: pd.DataFrame, prefix: str) -> list[int]:
    """The layer indices ``l`` of measures named ``{prefix}{l}`` in a tidy table, sorted."""
    layers = []
    for name in table["measure"].unique():
        suffix = str(name).removeprefix(prefix)
        if str(name).startswith(prefix) and suffix.isdigit():
            layers.append(int(suffix))
    if not layers:
        raise KeyError(f"no measure named '{prefix}<layer>' in the table")
    return sorted(layers)


def _legend_below(fig, axes, ncol: int | None = None, handles=None, labels=None):
    if handles is None:
        handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(labels), 5))


def _integer_ticks(ax, axis: str = "x"):
    """Integer tick labels (epochs, lags)."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def _chance_line(ax, y: float = 90.0):
    ax.axhline(y, color="0.5", linestyle=":", linewidth=0.9, zorder=0)


def _condition_label(condition: str, directory: PathLike | None = None) -> str:
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


def _settings_label(directory: PathLike, condition: str) -> str:
    """A legend label from the settings the runs actually used (recorded by the aggregation in
    ``aggregate.json``), e.g. ``FA + WN (γ = 0.6)``: experiments can override a condition's
    defaults, so its name alone may mislead. Falls back to the condition's usual label when the
    runs did not share a rule."""
    try:
        settings = json.loads((Path(directory) / "aggregate.json").read_text())["settings"]
        label = settings["rule"].upper()
    except (OSError, KeyError, ValueError, TypeError):
        return _condition_label(condition)
    if settings.get("wn"):
        label += f" + WN (γ = {settings['gamma']:g}{', IBN' if settings.get('ibn') else ''})"
    return label


def _divergence_note(directory: PathLike) -> str:
    """How many runs of an aggregated condition diverged (from its runs.csv), e.g. ``all 3 runs
    diverged``; empty when none did."""
    status = aggregate.read_runs_csv(directory)["status"]
    diverged, total = int((status == "diverged").sum()), len(status)
    if diverged == 0:
        return ""
    if diverged < total:
        return f"{diverged} of {total} runs diverged"
    return f"all {total} runs diverged" if total > 1 else "its run diverged"


def _with_divergence(label: str, directory: PathLike) -> str:
    """``label`` followed by the condition's :func:`_divergence_note`, if any."""
    note = _divergence_note(directory)
    return f"{label} ({note})" if note else label


def _note_figure(title: str, note: str, out_stem: PathLike, formats: Sequence[str]) -> list[Path]:
    """A figure with nothing to draw but the reason why (e.g. every run diverged before it)."""
    fig, (ax,) = _panels(1, width=6.0, height=2.0)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    return save_figure(fig, out_stem, formats)


def _trajectory_label(method: str, status: str) -> str:
    """The legend label of one trajectory run, saying so when it diverged (its trajectory stops there)."""
    label = _condition_label(method)
    return f"{label} (its run diverged)" if status == "diverged" else label


def _condition_color(condition: str) -> str:
    """The protocol's conditions keep their colours (:data:`PALETTE`); any other name gets one of
    :data:`EXTRA_COLORS` by a stable hash of the name, the same in every figure and every run."""
    if condition in PALETTE:
        return PALETTE[condition]
    return EXTRA_COLORS[zlib.crc32(condition.encode()) % len(EXTRA_COLORS)]


def _per_layer_conditions(aggregated: Mapping[str, PathLike], prefix: str):
    """Metrics of every condition and the layers ``l`` that all of them have a ``{prefix}{l}`` for."""
    tables = {condition: read_table(directory, "metrics") for condition, directory in aggregated.items()}
    layers = sorted(set.intersection(*(set(_layers(t, prefix)) for t in tables.values())))
    return tables, layers


# ---------------------------------------------------------------------------------------------
# method §9.1: open loop
# ---------------------------------------------------------------------------------------------


def plot_open_loop(scenario_tables: Mapping[str, PathLike], out_stem: PathLike,
                   formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_1, B_1ᵀ) vs iteration for the open-loop scenarios, mean ± sd over repetitions (paper Fig 3).

    ``scenario_tables`` maps scenario name -> ``open_loop/{scenario}.parquet``
    (columns repetition, iteration, angle).
    """
    fig, (ax,) = _panels(1, width=5.6, height=3.4)
    for scenario, path in scenario_tables.items():
        curve = aggregate.open_loop_curve(pd.read_parquet(path), keys=["iteration"]).sort_values("iteration")
        n = int(curve["n"].max())
        plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"],
                     color=SCENARIO_COLORS.get(scenario, "black"),
                     label=f"{SCENARIO_LABELS.get(scenario, scenario)}")
    _chance_line(ax)
    ax.set(xlabel="iteration", ylabel=r"$\angle(W_1, B_1^\top)$ (degrees)",
           title=f"Open loop 20-100-20: alignment of $W_1$ with $B_1^\\top$ (mean ± sd, {n} repetitions)")
    ax.legend(loc="lower left")
    return save_figure(fig, out_stem, formats)


def plot_open_loop_beta(sweep_tables: Mapping[bool, PathLike], out_stem: PathLike,
                        formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The β sweep of the open loop: final ∠(W_1, B_1ᵀ) vs β, without and with WN, and its time courses.

    ``sweep_tables`` maps wn (False / True) -> ``open_loop/beta_wn{0,1}.parquet`` (columns beta,
    repetition, iteration, angle). β sets the autocorrelation of the imposed error,
    ``δ₂[k] = β δ₂[k−1] + (1−β) ξ[k]``. Error bars and bands: sd over repetitions.
    """
    sweeps = {bool(wn): pd.read_parquet(path) for wn, path in sweep_tables.items()}
    fig, axes = _panels(1 + len(sweeps), width=3.6, height=3.0, sharex=False, sharey=True)
    wn_colors = {False: PALETTE["fa"], True: PALETTE["fa_wn"]}
    wn_labels = {False: "no WN", True: "WN (γ = 1)"}
    betas = sorted(set().union(*(set(t["beta"].unique()) for t in sweeps.values())))
    beta_colors = dict(zip(betas, sns.color_palette("viridis", len(betas) + 1)[:-1]))  # no pale yellow
    for panel, (wn, table) in enumerate(sorted(sweeps.items()), start=1):
        aggregated = aggregate.open_loop_curve(table, keys=["beta", "iteration"])
        final = aggregated[aggregated["iteration"] == aggregated["iteration"].max()].sort_values("beta")
        axes[0].errorbar(final["beta"], final["mean"], yerr=final["sd"].fillna(0), color=wn_colors[wn],
                         marker="o", markersize=4, capsize=3, linewidth=1.4, label=wn_labels[wn])
        for beta in betas:
            curve = aggregated[aggregated["beta"] == beta].sort_values("iteration")
            plot_mean_sd(axes[panel], curve["iteration"], curve["mean"], curve["sd"], color=beta_colors[beta],
                         label=f"β = {beta:g}", alpha=0.12)
        _chance_line(axes[panel])
        axes[panel].set(xlabel="iteration", title=f"Time course, {wn_labels[wn]}")
    _legend_below(fig, axes[1:], ncol=len(betas))
    _chance_line(axes[0])
    axes[0].set(xlabel=r"$\beta$ in $\delta_2[k] = \beta\,\delta_2[k-1] + (1-\beta)\,\xi[k]$", ylabel=r"$\angle(W_1, B_1^\top)$ (degrees)",
                title=r"Final angle vs $\beta$")
    axes[0].legend(loc="lower left")
    fig.suptitle("Open loop with graded error autocorrelation (mean ± sd over repetitions)")
    return save_figure(fig, out_stem, formats)


# ---------------------------------------------------------------------------------------------
# method §9.2, §9.3, §9.5: MNIST main runs
# ---------------------------------------------------------------------------------------------


def plot_angle_W_Bt(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                    formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_l, B_lᵀ) vs iteration per layer l = 1..d-1, one line per condition (paper Fig 4).

    ``aggregated`` maps condition -> aggregated directory (``aggregated/main/{condition}``).
    """
    tables, layers = _per_layer_conditions(aggregated, "angle_W_Bt_")
    fig, axes = _panels(len(layers))
    for ax, l in zip(axes, layers):
        for condition, table in tables.items():
            curve = measure_curve(table, f"angle_W_Bt_{l}")
            plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"], color=_condition_color(condition),
                         label=_with_divergence(_condition_label(condition, aggregated[condition]), aggregated[condition]))
        _chance_line(ax)
        ax.set(title=f"$W_{l}$ vs $B_{l}^\\top$", xlabel="iteration")
    axes[0].set_ylabel(r"$\angle(W_l, B_l^\top)$ (degrees)")
    _legend_below(fig, axes)
    fig.suptitle("Alignment of forward weights with the feedback weights (mean ± sd over seeds)")
    return save_figure(fig, out_stem, formats)


def plot_accuracy_loss(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                       formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Test accuracy and test loss vs epoch, one line per condition (paper Figs 5 and 6)."""
    fig, (ax_acc, ax_loss) = _panels(2, width=4.4, height=3.2, sharey=False)
    for condition, directory in aggregated.items():
        evaluation = read_table(directory, "evaluation")
        color, label = _condition_color(condition), _with_divergence(_condition_label(condition, directory), directory)
        accuracy = measure_curve(evaluation, "test_accuracy", x="epoch")
        plot_mean_sd(ax_acc, accuracy["epoch"], 100 * accuracy["mean"], 100 * accuracy["sd"],
                     color=color, label=label)
        loss = measure_curve(evaluation, "test_loss", x="epoch")
        plot_mean_sd(ax_loss, loss["epoch"], loss["mean"], loss["sd"], color=color, label=label)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_loss.set(xlabel="epoch", ylabel=r"test loss per image, $\frac{1}{2}\|Y^* - Y\|^2$", title="Test loss")
    for ax in (ax_acc, ax_loss):
        _integer_ticks(ax)
    _legend_below(fig, [ax_acc])
    fig.suptitle("MNIST test set over training (mean ± sd over seeds)")
    return save_figure(fig, out_stem, formats)


def plot_update_angle(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                      formats: Sequence[str] = ("png", "pdf"), window: int = 60) -> list[Path]:
    """∠(ΔW_l^FA, ΔW_l^BP) vs iteration per layer l = 0..d-1 (paper Fig 8), causal moving average.

    Both updates are computed on the same minibatch and state before each step. The mean and
    the across-seed sd are each passed through a causal moving average of ``window`` iterations
    (config ``figures.moving_average``; the first points average over what exists), so the band
    shows the typical seed-to-seed spread of the per-iteration angle.
    """
    tables, layers = _per_layer_conditions(aggregated, "angle_dWfa_dWbp_")
    fig, axes = _panels(len(layers), ncols=min(len(layers), 5), width=2.9)
    for ax, l in zip(axes, layers):
        for condition, table in tables.items():
            curve = measure_curve(table, f"angle_dWfa_dWbp_{l}")
            plot_mean_sd(ax, curve["iteration"], causal_moving_average(curve["mean"].to_numpy(), window),
                         causal_moving_average(curve["sd"].to_numpy(), window), color=_condition_color(condition),
                         label=_with_divergence(_condition_label(condition, aggregated[condition]), aggregated[condition]))
        _chance_line(ax)
        ax.set(title=f"$\\Delta W_{l}$", xlabel="iteration")
    axes[0].set_ylabel(r"$\angle(\Delta W_l^{FA}, \Delta W_l^{BP})$ (degrees)")
    _legend_below(fig, axes)
    fig.suptitle(f"Angle between FA and BP updates on the same minibatch "
                 f"(causal moving average over {window} iterations; mean ± sd over seeds)")
    return save_figure(fig, out_stem, formats)


# ---------------------------------------------------------------------------------------------
# method §9.4 and §9.6: alignment terms and shadow weights
# ---------------------------------------------------------------------------------------------

#: Line style per alignment-term kind: the nonlinear term with its band, the linear one dashed.
KIND_STYLES = {"nonlinear": "-", "linear": "--"}


def _variant(name: str) -> str:
    """``fa_fixed`` (condition name) or ``fixed`` -> ``fixed``."""
    return str(name).removeprefix("fa_")


def _terms_panels(aggregated: Mapping[str, PathLike], table_name: str, row_key: str, x: str,
                  out_stem: PathLike, formats: Sequence[str], row_title: Callable[[int], str], xlabel: str,
                  title: str, window: int = 1) -> list[Path]:
    """Panels rows = ``row_key`` values, columns = layers; lines = variant (colour) x kind (style).

    ``window`` > 1 passes mean and sd through :func:`causal_moving_average` along ``x``. A variant
    whose runs all diverged before the analysed iterations has an empty table: the legend says so.
    """
    directories = {_variant(name): directory for name, directory in aggregated.items()}
    for variant in directories:
        if variant not in VARIANT_COLORS:
            raise KeyError(f"unknown alignment-term variant '{variant}' (figures.VARIANT_COLORS has {list(VARIANT_COLORS)})")
    tables = {variant: read_table(directory, table_name) for variant, directory in directories.items()}
    labels = {variant: _with_divergence(VARIANT_LABELS[variant], directory) for variant, directory in directories.items()}
    rows = sorted(set().union(*(t[row_key].unique() for t in tables.values())))
    layers = sorted(set().union(*(t["layer"].unique() for t in tables.values())))
    if not rows:
        return _note_figure(title, f"Nothing to draw: {'; '.join(labels.values())}, none reached the analysed "
                                   "iterations.", out_stem, formats)
    fig, axes = _panels(len(rows) * len(layers), ncols=len(layers), width=3.0, height=2.5,
                        sharex=True if x == "iteration" else "row")
    axes = np.asarray(axes).reshape(len(rows), len(layers))
    for r, row_value in enumerate(rows):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            for variant, table in tables.items():
                for kind, style in KIND_STYLES.items():
                    part = table[(table[row_key] == row_value) & (table["layer"] == layer) & (table["kind"] == kind)]
                    curve = part[part["measure"] == "angle"].sort_values(x)
                    if curve.empty:
                        continue
                    mean = causal_moving_average(curve["mean"].to_numpy(), window)
                    sd = (causal_moving_average(curve["sd"].to_numpy(), window) if kind == "nonlinear"
                          else np.full(len(curve), np.nan))
                    plot_mean_sd(ax, curve[x], mean, sd, color=VARIANT_COLORS[variant], linestyle=style,
                                 linewidth=1.1)
            _chance_line(ax)
            ax.set_title(f"$W_{layer}$, {row_title(row_value)}", fontsize="medium")
            # at most 5 integer ticks: four-digit iterations must not run into each other
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel)
        axes[r, 0].set_ylabel(r"$\angle(T^o_l[k], B_l^\top)$ (degrees)")
    handles = [Line2D([], [], color=VARIANT_COLORS[variant], label=label if len(tables[variant]) else
                      f"{label}: nothing to draw") for variant, label in labels.items()]
    handles += [Line2D([], [], color="0.3", linestyle=style, label=kind) for kind, style in KIND_STYLES.items()]
    _legend_below(fig, axes.ravel(), ncol=min(len(handles), 3), handles=handles,
                  labels=[handle.get_label() for handle in handles])
    fig.suptitle(title)
    return save_figure(fig, out_stem, formats)


def plot_alignment_terms_lag(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                             formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(T^o_l[k], B_lᵀ) vs lag o at the analysed iterations k, per layer (paper Fig 7, method §6).

    ``aggregated`` maps variant (``fixed``, ``reshuffle``, ``wrong_labels``, or the condition names
    ``fa_fixed``, ...) -> ``aggregated/terms/fa_{variant}`` (its ``terms_lag.parquet``). Solid with
    band: the nonlinear term; dashed: its linear approximation.
    """
    return _terms_panels(aggregated, "terms_lag", "iteration", "lag", out_stem, formats,
                         row_title=lambda k: f"k = {k}", xlabel="lag o (iterations)",
                         title="Angle of the alignment terms with the feedback weights vs lag "
                               "(mean ± sd over seeds; solid nonlinear, dashed linear)")


def plot_alignment_terms_time(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                              formats: Sequence[str] = ("png", "pdf"), window: int = 60) -> list[Path]:
    """∠(T^o_l[k], B_lᵀ) vs iteration k at fixed lags o (config ``lags_over_time``), per layer (method §6).

    The per-iteration angles scatter widely from one minibatch to the next; mean and sd are
    passed through a causal moving average of ``window`` iterations (config
    ``figures.moving_average``, as for the update angle).
    """
    return _terms_panels(aggregated, "terms_time", "lag", "iteration", out_stem, formats,
                         row_title=lambda o: f"lag o = {o}", xlabel="iteration k",
                         title=f"Angle of the alignment terms with the feedback weights over training (causal moving "
                               f"average over {window} iterations;\nmean ± sd over seeds; solid nonlinear, dashed linear)",
                         window=window)


def _shadow_figure(directory: PathLike, series: Mapping[str, tuple[str, str, str]], out_stem: PathLike,
                   formats: Sequence[str], title: str) -> list[Path]:
    """Panels per layer of the shadow table; ``series`` maps measure -> (colour key, label, style)."""
    table = read_table(directory, "shadow")
    note = _divergence_note(directory)
    layers = sorted(table["layer"].unique())
    fig, axes = _panels(len(layers), width=3.0, height=2.7)
    for ax, layer in zip(axes, layers):
        part = table[table["layer"] == layer]
        for measure, (color_key, label, style) in series.items():
            curve = measure_curve(part, measure)
            plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"], color=SERIES_COLORS[color_key],
                         label=label, linestyle=style)
        _chance_line(ax)
        ax.set(title=f"$W_{layer}$", xlabel="iteration")
    axes[0].set_ylabel("angle (degrees)")
    _legend_below(fig, axes, ncol=len(series))
    fig.suptitle(f"{title}\n{note}" if note else title)
    return save_figure(fig, out_stem, formats)


def plot_shadow_linearised(aggregated_dir: PathLike, out_stem: PathLike,
                           formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Real ∠(W_l, B_lᵀ) beside the linearised shadow's ∠(W^lin_l, B_lᵀ), per layer (paper Fig 9).

    ``aggregated_dir`` is ``aggregated/shadow/fa`` (its ``shadow.parquet``).
    """
    series = {"angle_W_Bt": ("real", r"real FA run: $\angle(W_l, B_l^\top)$", "-"),
              "angle_Wlin_Bt": ("linearised", r"linearised shadow: $\angle(W^{lin}_l, B_l^\top)$", "-")}
    return _shadow_figure(aggregated_dir, series, out_stem, formats,
                          "Real weights vs the linearised shadow (zero-degree + linear terms; mean ± sd over seeds)")


def plot_shadow_random_b(aggregated_dir: PathLike, out_stem: PathLike,
                         formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Real ∠(W_l, B_lᵀ) beside the random-B′ shadow's ∠(W^B′_l, B′_lᵀ) and ∠(W^B′_l, B_lᵀ) (paper Fig 10)."""
    series = {"angle_W_Bt": ("real", r"real FA run: $\angle(W_l, B_l^\top)$", "-"),
              "angle_WBprime_Bprimet": ("random_b", r"shadow with $B'$: $\angle(W^{B'}_l, B'^\top_l)$", "-"),
              "angle_WBprime_Bt": ("random_b_vs_B", r"same shadow vs real $B$: $\angle(W^{B'}_l, B_l^\top)$", "--")}
    return _shadow_figure(aggregated_dir, series, out_stem, formats,
                          "Real weights vs a shadow built with an unrelated random B′ (mean ± sd over seeds)")


#: The remainder figure's rows: measure -> (row label, line label); the ratio row also shows the
#: linear-sum difference (dashed) for contrast, on a log scale.
REMAINDER_ROWS = {
    "ratio_R_dW": (r"$\|R_l\| / \|\Delta W_l\|$ (%)", "remainder R (nonlinear terms, all lags)"),
    "angle_R_Bt": (r"$\angle(R_l, B_l^\top)$ (degrees)", None),
    "angle_zero_Bt": (r"$\angle(\mathrm{zero\ degree}, B_l^\top)$ (degrees)", None),
}
REMAINDER_COLOR = "#332288"
LINEAR_SUM_COLOR = "#999999"


def plot_remainder(aggregated_dir: PathLike, out_stem: PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The remainder of the expansion and the zero-degree term vs iteration, per layer (method §6).

    ``aggregated_dir`` is ``aggregated/remainder/fa`` (its ``remainder.parquet``). Rows:
    ``||R_l|| / ||Delta W_l||`` in percent (log scale; dashed: the same difference with the linear
    terms, which keeps the f' nonlinearity and is not the remainder), ``angle(R_l, B_l^T)`` and
    ``angle(zero-degree term, B_l^T)``. Points are the measured iterations, mean ± sd over seeds.
    """
    title = "Remainder of the expansion of $\\Delta W_l$ and the zero-degree term (mean ± sd over seeds)"
    table = read_table(aggregated_dir, "remainder")
    # at k = 0 R = 0 exactly: no ratio on a log scale, no angle; runs that diverged leave no finite rows
    table = table[(table["iteration"] > 0) & np.isfinite(table["mean"])]
    note = _divergence_note(aggregated_dir)
    if table.empty:
        return _note_figure(title, f"Nothing to draw: no finite remainder was measured ({note or 'no run reached k > 0'}).",
                            out_stem, formats)
    if note:
        title += f"\n{note}: the lines are the runs that reached each iteration"
    layers = sorted(table["layer"].unique())
    fig, axes = _panels(len(REMAINDER_ROWS) * len(layers), ncols=len(layers), width=2.9, height=2.3, sharey="row")
    axes = np.asarray(axes).reshape(len(REMAINDER_ROWS), len(layers))
    for r, (measure, (ylabel, label)) in enumerate(REMAINDER_ROWS.items()):
        scale = 100.0 if measure.startswith("ratio") else 1.0
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            part = table[table["layer"] == layer]
            curve = measure_curve(part, measure)
            plot_mean_sd(ax, curve["iteration"], scale * curve["mean"], scale * curve["sd"], color=REMAINDER_COLOR, label=label)
            ax.plot(curve["iteration"], scale * curve["mean"], "o", color=REMAINDER_COLOR, markersize=2.2)
            if measure == "ratio_R_dW":
                linear = measure_curve(part, "ratio_Rlin_dW")
                plot_mean_sd(ax, linear["iteration"], 100 * linear["mean"], 100 * linear["sd"], color=LINEAR_SUM_COLOR,
                             linestyle="--", label="the same with the linear terms (not the remainder)")
                ax.set_yscale("log")
            else:
                _chance_line(ax)
            if r == 0:
                ax.set_title(f"$W_{layer}$", fontsize="medium")
            if r == len(REMAINDER_ROWS) - 1:
                ax.set_xlabel("iteration k")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        axes[r, 0].set_ylabel(ylabel)
    _legend_below(fig, [axes[0, 0]], ncol=2)
    fig.suptitle(title)
    return save_figure(fig, out_stem, formats)


#: Similarity lines: label kind -> colour; within / between class -> line style.
SIMILARITY_COLORS = {"true": "#117733", "permuted": "#999999"}
SIMILARITY_STYLES = {"within": "-", "between": "--"}


def plot_similarity(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                    formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Within- vs between-class means of ``S = L_{l-1}[k-o] L_{l-1}[k]^T`` vs lag o (method §6).

    ``aggregated`` maps variant (or condition name ``fa_{variant}``) -> ``aggregated/terms/fa_{variant}``
    (its ``terms_similarity.parquet``, and ``terms_lag.parquet`` for the analysed iterations k).
    Rows: variant x k; columns: the layer l of ``W_l`` whose input ``L_{l-1}`` is compared. Green:
    the true classes; grey: labels permuted within each minibatch (no class structure).
    """
    title = "Similarity of layer inputs k − o and k: within vs between classes (mean ± sd over seeds)"
    panels, missing = [], []
    for name, directory in aggregated.items():
        variant = _variant(name)
        similarity = read_table(directory, "terms_similarity")
        lag_analysis = read_table(directory, "terms_lag")
        label = _with_divergence(VARIANT_LABELS.get(variant, variant), directory)
        for k in sorted(lag_analysis["iteration"].unique()):
            lags = lag_analysis.loc[lag_analysis["iteration"] == k, "lag"].unique()  # not the over-time lags
            part = similarity[(similarity["iteration"] == k) & similarity["lag"].isin(lags)]
            part = part[np.isfinite(part["mean"])]
            if len(part):
                panels.append((label, k, part))
        if not any(panel[0] == label for panel in panels):
            missing.append(label)
    if not panels:
        reason = "; ".join(missing) or "no runs"
        return _note_figure(title, f"Nothing to draw: {reason}; none reached the analysed iterations.", out_stem, formats)
    if missing:
        title += f"\nnot drawn, no run reached the analysed iterations: {'; '.join(missing)}"
    layers = sorted(set.intersection(*(set(part["layer"].unique()) for _, _, part in panels)))
    # each layer's inputs have their own scale: panels share the y axis within a column
    fig, axes = _panels(len(panels) * len(layers), ncols=len(layers), width=2.7, height=2.1, sharex=True, sharey="col")
    axes = np.asarray(axes).reshape(len(panels), len(layers))
    for r, (variant, k, part) in enumerate(panels):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            for labels, color in SIMILARITY_COLORS.items():
                for which, style in SIMILARITY_STYLES.items():
                    curve = measure_curve(part, which, x="lag", layer=layer, labels=labels)
                    plot_mean_sd(ax, curve["lag"], curve["mean"], curve["sd"], color=color, linestyle=style,
                                 label=f"{which} class, {'true' if labels == 'true' else 'permuted'} labels", linewidth=1.1)
            ax.set_title(f"{variant}, k = {k}, $L_{layer - 1}$", fontsize="small")
            if r == len(panels) - 1:
                ax.set_xlabel("lag o (iterations)")
            _integer_ticks(ax)
        axes[r, 0].set_ylabel(r"mean of $L_{l-1}[k-o]\,L_{l-1}[k]^\top$")
    _legend_below(fig, [axes[0, 0]], ncol=4)
    fig.suptitle(title)
    return save_figure(fig, out_stem, formats)


# ---------------------------------------------------------------------------------------------
# method §9.7: weight trajectories
# ---------------------------------------------------------------------------------------------


def plot_trajectory_pca(pca_npz: PathLike, out_stem: PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Trajectories on the joint PC1–PC2 plane over the loss landscape of that plane (method §8).

    ``pca_npz`` is ``embedding/trajectory_pca.npz`` (:func:`fa_analysis.embedding.pca_landscape`).
    Filled contours: summed training loss at the weights the plane's points map back to (log
    colour scale); lines: each method's snapshots (circle = first, square = last); crosses: B's
    reference points (the initial state with ``W_l := B_lᵀ``).
    """
    with np.load(pca_npz) as npz:
        data = {name: npz[name] for name in npz.files}
    _style()
    fig, ax = plt.subplots(figsize=(6.6, 6.0), constrained_layout=True)
    loss = data["loss"]
    positive = loss[np.isfinite(loss) & (loss > 0)]
    if len(positive) and positive.max() > 10 * positive.min():  # spans decades: log levels
        levels, norm = np.geomspace(positive.min(), positive.max(), 16), LogNorm()
    else:
        levels, norm = 16, None
    # light greys only, so that every condition's line stays visible on the landscape
    greys = ListedColormap(plt.get_cmap("Greys")(np.linspace(0.05, 0.6, 256)))
    contour = ax.contourf(data["grid_pc1"], data["grid_pc2"], np.where(loss > 0, loss, np.nan), levels=levels,
                          cmap=greys, norm=norm)
    ax.contour(data["grid_pc1"], data["grid_pc2"], loss, levels=contour.levels, colors="0.45", linewidths=0.3)
    scale = " (log colour scale)" if norm is not None else ""
    images = f" over {int(data['landscape_images']):,} training images" if "landscape_images" in data else ""
    fig.colorbar(contour, ax=ax, label=f"summed training loss{images}{scale}",
                 format=FuncFormatter(lambda value, _: f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"))
    for index, (method, status) in enumerate(zip(data["methods"], data["method_status"])):
        points = data["points"][data["point_method"] == index]
        color, label = _condition_color(str(method)), _trajectory_label(str(method), str(status))
        ax.plot(points[:, 0], points[:, 1], color=color, linewidth=1.6, label=label)
        ax.plot(*points[0], marker="o", color=color, markersize=6, markeredgecolor="white")
        ax.plot(*points[-1], marker="s", color=color, markersize=6, markeredgecolor="white")
    for label, point in zip(data["reference_labels"], data["reference_points"]):
        method = str(label).removeprefix("B (").removesuffix(")")
        ax.plot(*point, marker="X", markersize=10, color=PALETTE.get(method, REFERENCE_COLOR),
                markeredgecolor=REFERENCE_COLOR, linestyle="none", label=f"B reference ({_condition_label(method)})")
    ratio = data["explained_variance_ratio"]
    ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f} % of variance)", ylabel=f"PC2 ({100 * ratio[1]:.1f} % of variance)",
           title="Weight trajectories on the joint PCA plane (○ start, □ end)")
    fig.legend(loc="outside lower center", ncol=3, fontsize="small")
    return save_figure(fig, out_stem, formats)


def plot_trajectory_umap(umap_parquet: PathLike, out_stem: PathLike,
                         formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """UMAP of the trajectory snapshots of every method (method §8); start ○, end □."""
    table = pd.read_parquet(umap_parquet)
    _style()
    fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
    for method, points in table.groupby("method", sort=False):
        points = points.sort_values("iteration")
        color, label = _condition_color(str(method)), _trajectory_label(str(method), points["status"].iloc[0])
        ax.plot(points["umap_1"], points["umap_2"], color=color, linewidth=0.6, alpha=0.6)
        ax.scatter(points["umap_1"], points["umap_2"], color=color, s=5, label=label, rasterized=True)
        first, last = points.iloc[0], points.iloc[-1]
        ax.plot(first["umap_1"], first["umap_2"], marker="o", color=color, markersize=7, markeredgecolor="black")
        ax.plot(last["umap_1"], last["umap_2"], marker="s", color=color, markersize=7, markeredgecolor="black")
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title="UMAP of the weight trajectories (○ start, □ end)")
    ax.legend(loc="best", markerscale=3)
    return save_figure(fig, out_stem, formats)


# ---------------------------------------------------------------------------------------------
# method §9.8: label noise and label change
# ---------------------------------------------------------------------------------------------


def plot_label_noise(aggregated: Mapping[str, Mapping[int, PathLike]], out_stem: PathLike,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Final test accuracy and final ∠(W_l, B_lᵀ) vs the label-noise level p, one colour per condition
    (method §8).

    ``aggregated`` maps condition -> {p (percent of training labels replaced) ->
    ``aggregated/label_noise/{condition}_p{p}``}. Points are means over the completed seeds with sd
    error bars (from each level's runs.csv); a level whose runs all diverged has no point, and the
    legend names it.
    """
    runs = pd.concat([aggregate.read_runs_csv(directory).assign(noise_condition=condition, level=float(level))
                      for condition, levels in aggregated.items() for level, directory in levels.items()],
                     ignore_index=True)
    completed = runs[runs["status"] == "completed"]
    layers = sorted(int(c.removeprefix("angle_W_Bt_")) for c in runs.columns
                    if c.startswith("angle_W_Bt_") and c.removeprefix("angle_W_Bt_").isdigit())
    fig, axes = _panels(1 + len(layers), width=2.7, height=2.8, sharey=False)
    for ax in axes[2:]:
        ax.sharey(axes[1])  # the angle panels share a scale; accuracy has its own
    panels = [(axes[0], "final_test_accuracy", 100.0)] + [(ax, f"angle_W_Bt_{l}", 1.0) for ax, l in zip(axes[1:], layers)]
    handles = []
    for condition in aggregated:
        color = _condition_color(condition)
        done = completed[completed["noise_condition"] == condition]
        for ax, column, scale in panels:
            stats = done.groupby("level")[column].agg(["mean", "std"]).reset_index()
            ax.errorbar(stats["level"], scale * stats["mean"], yerr=scale * stats["std"].fillna(0),
                        color=color, marker="o", markersize=4, capsize=3, linewidth=1.4)
        levels = runs[runs["noise_condition"] == condition]["level"]
        lost = sorted(set(levels) - set(done["level"]))
        label = _condition_label(condition)
        if lost:
            label += f" (all runs diverged at p = {', '.join(f'{p:g}' for p in lost)} %)"
        handles.append(Line2D([], [], color=color, marker="o", markersize=4, label=label))
    axes[0].set_xticks(sorted(set(runs["level"])))  # the panels share x: every level, drawn or not
    axes[0].axhline(10, color="0.5", linestyle=":", linewidth=0.9)
    axes[0].set(xlabel="label noise p (%)", ylabel="final test accuracy (%)", title="Test accuracy")
    for ax, l in zip(axes[1:], layers):
        _chance_line(ax)
        ax.set(xlabel="label noise p (%)", title=f"$\\angle(W_{l}, B_{l}^\\top)$")
    axes[1].set_ylabel("final angle (degrees)")
    _legend_below(fig, axes, handles=handles, labels=[handle.get_label() for handle in handles])
    seeds = completed.groupby(["noise_condition", "level"]).size()
    counted = f"mean ± sd over {seeds.min()}+ completed seeds per point" if len(seeds) else "no run completed"
    fig.suptitle(f"Learning under label noise ({counted})")
    return save_figure(fig, out_stem, formats)


def plot_label_change(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                      formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Test accuracy and ∠(W, Bᵀ) over all layers through both phases of the label change (method §8).

    A new random code map is drawn at the phase boundary (dashed vertical line) and training goes on
    without re-initialising the network.
    """
    fig, (ax_acc, ax_angle) = _panels(2, width=4.6, height=3.2, sharey=False)
    boundaries = set()
    for condition, directory in aggregated.items():
        color, label = _condition_color(condition), _with_divergence(_settings_label(directory, condition), directory)
        evaluation = read_table(directory, "evaluation")
        accuracy = measure_curve(evaluation, "test_accuracy", x="epoch")
        plot_mean_sd(ax_acc, accuracy["epoch"], 100 * accuracy["mean"], 100 * accuracy["sd"],
                     color=color, label=label)
        later = evaluation[evaluation["phase"] > evaluation["phase"].min()]
        if len(later):
            boundaries.add(float(later["epoch"].min()))
        metrics = read_table(directory, "metrics")
        angle = measure_curve(metrics, "angle_W_Bt_all")
        plot_mean_sd(ax_angle, _fractional_epoch(angle), angle["mean"], angle["sd"], color=color, label=label)
    for ax in (ax_acc, ax_angle):
        for boundary in boundaries:
            ax.axvline(boundary, color="0.3", linestyle="--", linewidth=0.9)
    _chance_line(ax_angle)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (new code map at dashed line)")
    ax_angle.set(xlabel="epoch", ylabel=r"$\angle(W, B^\top)$ (degrees)",
                 title="Alignment, layers 1..d-1 concatenated")
    for ax in (ax_acc, ax_angle):
        _integer_ticks(ax)
    _legend_below(fig, [ax_acc])
    fig.suptitle("Label change across time (mean ± sd over seeds)")
    return save_figure(fig, out_stem, formats)


def _fractional_epoch(curve: pd.DataFrame) -> np.ndarray:
    """Iteration -> epoch + fraction of the epoch done, from the table's epoch column."""
    iteration = curve["iteration"].to_numpy(dtype=np.float64)
    epoch = curve["epoch"].to_numpy(dtype=np.float64)
    per_epoch = pd.Series(iteration).groupby(epoch).agg(["min", "count"])
    start = per_epoch["min"].reindex(epoch).to_numpy()
    count = per_epoch["count"].reindex(epoch).to_numpy()
    return epoch + (iteration - start) / count
