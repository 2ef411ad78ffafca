"""Figures of the mechanisms of alignment (method §9.4, §9.6, §6): the alignment terms against the
lag and over time, the shadow weights (linearised, random B′), the remainder of the expansion and
the similarity of layer inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike


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
        if variant not in style.VARIANT_COLORS:
            raise KeyError(f"unknown alignment-term variant '{variant}' "
                           f"(figures.style.VARIANT_COLORS has {list(style.VARIANT_COLORS)})")
    tables = {variant: style.read_table(directory, table_name) for variant, directory in directories.items()}
    labels = {variant: style.with_divergence(style.VARIANT_LABELS[variant], directory)
              for variant, directory in directories.items()}
    rows = sorted(set().union(*(t[row_key].unique() for t in tables.values())))
    layers = sorted(set().union(*(t["layer"].unique() for t in tables.values())))
    if not rows:
        return style.note_figure(title, f"Nothing to draw: {'; '.join(labels.values())}, none reached the analysed "
                                        "iterations.", out_stem, formats)
    fig, axes = style.panels(len(rows) * len(layers), ncols=len(layers), width=3.0, height=2.5,
                             sharex=True if x == "iteration" else "row")
    axes = np.asarray(axes).reshape(len(rows), len(layers))
    for r, row_value in enumerate(rows):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            for variant, table in tables.items():
                for kind, linestyle in KIND_STYLES.items():
                    part = table[(table[row_key] == row_value) & (table["layer"] == layer) & (table["kind"] == kind)]
                    curve = part[part["measure"] == "angle"].sort_values(x)
                    if curve.empty:
                        continue
                    mean = style.causal_moving_average(curve["mean"].to_numpy(), window)
                    sd = (style.causal_moving_average(curve["sd"].to_numpy(), window) if kind == "nonlinear"
                          else np.full(len(curve), np.nan))
                    style.plot_mean_sd(ax, curve[x], mean, sd, color=style.VARIANT_COLORS[variant], linestyle=linestyle,
                                       linewidth=1.1)
            style.chance_line(ax)
            ax.set_title(f"$W_{layer}$, {row_title(row_value)}", fontsize="medium")
            # at most 5 integer ticks: four-digit iterations must not run into each other
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel)
        axes[r, 0].set_ylabel(r"$\angle(T^o_l[k], B_l^\top)$ (degrees)")
    handles = [Line2D([], [], color=style.VARIANT_COLORS[variant], label=label if len(tables[variant]) else
                      f"{label}: nothing to draw") for variant, label in labels.items()]
    handles += [Line2D([], [], color="0.3", linestyle=linestyle, label=kind) for kind, linestyle in KIND_STYLES.items()]
    style.legend_below(fig, axes.ravel(), ncol=min(len(handles), 3), handles=handles,
                       labels=[handle.get_label() for handle in handles])
    fig.suptitle(title)
    return style.save_figure(fig, out_stem, formats)


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
    table = style.read_table(directory, "shadow")
    note = style.divergence_note(directory)
    layers = sorted(table["layer"].unique())
    fig, axes = style.panels(len(layers), width=3.0, height=2.7)
    for ax, layer in zip(axes, layers):
        part = table[table["layer"] == layer]
        for measure, (color_key, label, linestyle) in series.items():
            curve = style.measure_curve(part, measure)
            style.plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"], color=style.SERIES_COLORS[color_key],
                               label=label, linestyle=linestyle)
        style.chance_line(ax)
        ax.set(title=f"$W_{layer}$", xlabel="iteration")
    axes[0].set_ylabel("angle (degrees)")
    style.legend_below(fig, axes, ncol=len(series))
    fig.suptitle(f"{title}\n{note}" if note else title)
    return style.save_figure(fig, out_stem, formats)


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
    table = style.read_table(aggregated_dir, "remainder")
    # at k = 0 R = 0 exactly: no ratio on a log scale, no angle; runs that diverged leave no finite rows
    table = table[(table["iteration"] > 0) & np.isfinite(table["mean"])]
    note = style.divergence_note(aggregated_dir)
    if table.empty:
        return style.note_figure(title, "Nothing to draw: no finite remainder was measured "
                                        f"({note or 'no run reached k > 0'}).", out_stem, formats)
    if note:
        title += f"\n{note}: the lines are the runs that reached each iteration"
    layers = sorted(table["layer"].unique())
    fig, axes = style.panels(len(REMAINDER_ROWS) * len(layers), ncols=len(layers), width=2.9, height=2.3, sharey="row")
    axes = np.asarray(axes).reshape(len(REMAINDER_ROWS), len(layers))
    for r, (measure, (ylabel, label)) in enumerate(REMAINDER_ROWS.items()):
        scale = 100.0 if measure.startswith("ratio") else 1.0
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            part = table[table["layer"] == layer]
            curve = style.measure_curve(part, measure)
            style.plot_mean_sd(ax, curve["iteration"], scale * curve["mean"], scale * curve["sd"], color=REMAINDER_COLOR,
                               label=label)
            ax.plot(curve["iteration"], scale * curve["mean"], "o", color=REMAINDER_COLOR, markersize=2.2)
            if measure == "ratio_R_dW":
                linear = style.measure_curve(part, "ratio_Rlin_dW")
                style.plot_mean_sd(ax, linear["iteration"], 100 * linear["mean"], 100 * linear["sd"],
                                   color=LINEAR_SUM_COLOR, linestyle="--",
                                   label="the same with the linear terms (not the remainder)")
                ax.set_yscale("log")
            else:
                style.chance_line(ax)
            if r == 0:
                ax.set_title(f"$W_{layer}$", fontsize="medium")
            if r == len(REMAINDER_ROWS) - 1:
                ax.set_xlabel("iteration k")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        axes[r, 0].set_ylabel(ylabel)
    style.legend_below(fig, [axes[0, 0]], ncol=2)
    fig.suptitle(title)
    return style.save_figure(fig, out_stem, formats)


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
        similarity = style.read_table(directory, "terms_similarity")
        lag_analysis = style.read_table(directory, "terms_lag")
        label = style.with_divergence(style.VARIANT_LABELS.get(variant, variant), directory)
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
        return style.note_figure(title, f"Nothing to draw: {reason}; none reached the analysed iterations.",
                                 out_stem, formats)
    if missing:
        title += f"\nnot drawn, no run reached the analysed iterations: {'; '.join(missing)}"
    layers = sorted(set.intersection(*(set(part["layer"].unique()) for _, _, part in panels)))
    # each layer's inputs have their own scale: panels share the y axis within a column
    fig, axes = style.panels(len(panels) * len(layers), ncols=len(layers), width=2.7, height=2.1, sharex=True,
                             sharey="col")
    axes = np.asarray(axes).reshape(len(panels), len(layers))
    for r, (variant, k, part) in enumerate(panels):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            for labels, color in SIMILARITY_COLORS.items():
                for which, linestyle in SIMILARITY_STYLES.items():
                    curve = style.measure_curve(part, which, x="lag", layer=layer, labels=labels)
                    style.plot_mean_sd(ax, curve["lag"], curve["mean"], curve["sd"], color=color, linestyle=linestyle,
                                       label=f"{which} class, {'true' if labels == 'true' else 'permuted'} labels",
                                       linewidth=1.1)
            ax.set_title(f"{variant}, k = {k}, $L_{layer - 1}$", fontsize="small")
            if r == len(panels) - 1:
                ax.set_xlabel("lag o (iterations)")
            style.integer_ticks(ax)
        axes[r, 0].set_ylabel(r"mean of $L_{l-1}[k-o]\,L_{l-1}[k]^\top$")
    style.legend_below(fig, [axes[0, 0]], ncol=4)
    fig.suptitle(title)
    return style.save_figure(fig, out_stem, formats)
