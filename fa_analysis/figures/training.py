"""Figures of the main MNIST runs over training (method §9.2, §9.3, §9.5): alignment with the
feedback weights, test accuracy and loss, and the angle between the FA and BP updates.

Each takes ``aggregated``: condition -> its aggregated directory (``aggregated/main/{condition}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike


def plot_angle_W_Bt(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                    formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_l, B_lᵀ) vs iteration per layer l = 1..d-1, one line per condition (paper Fig 4).

    ``aggregated`` maps condition -> aggregated directory (``aggregated/main/{condition}``).
    """
    tables, layers = style.per_layer_conditions(aggregated, "angle_W_Bt_")
    fig, axes = style.panels(len(layers))
    for ax, l in zip(axes, layers):
        for condition, table in tables.items():
            curve = style.measure_curve(table, f"angle_W_Bt_{l}")
            style.plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"], color=style.condition_color(condition),
                               label=style.condition_legend(condition, aggregated[condition]))
        style.chance_line(ax)
        ax.set(title=f"$W_{l}$ vs $B_{l}^\\top$", xlabel="iteration")
    axes[0].set_ylabel(r"$\angle(W_l, B_l^\top)$ (degrees)")
    style.legend_below(fig, axes)
    fig.suptitle("Alignment of forward weights with the feedback weights (mean ± sd over seeds)")
    return style.save_figure(fig, out_stem, formats)


#: The zoomed accuracy panel shows the last fifth of the epochs (at least the last two).
ZOOM_FRACTION = 0.2


def last_epochs_limits(curves: Sequence[pd.DataFrame], fraction: float = ZOOM_FRACTION):
    """Axis limits ``(x0, x1), (y0, y1)`` of the zoom on the last epochs of accuracy curves.

    ``curves`` have columns ``epoch``, ``mean``, ``sd`` (accuracy in percent). ``x`` runs over the
    last ``fraction`` of the epochs (at least two) up to the last epoch any curve reaches; ``y``
    spans every curve's mean ± sd there, padded by 5 % of that span (at least 0.25 points) and
    kept at or below 100 %; None when the curves end at epoch 0 or have no finite value there.
    """
    last = max(float(curve["epoch"].max()) for curve in curves)
    first = max(0.0, last - max(2.0, np.ceil(fraction * last)))
    if last == first:
        return None
    lows, highs = [], []
    for curve in curves:
        part = curve[curve["epoch"] >= first]
        sd = part["sd"].fillna(0.0).to_numpy(dtype=np.float64)
        mean = part["mean"].to_numpy(dtype=np.float64)
        lows.append(mean - sd)
        highs.append(mean + sd)
    low, high = np.concatenate(lows), np.concatenate(highs)
    finite = np.isfinite(low) & np.isfinite(high)
    if not finite.any():
        return None
    low, high = float(low[finite].min()), float(high[finite].max())
    pad = max(0.05 * (high - low), 0.25)
    return (first, last), (low - pad, min(high + pad, max(high, 100.0)))


def plot_accuracy_loss(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                       formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Test accuracy, the same zoomed on the last epochs, and test loss on a log scale vs epoch,
    one line per condition (paper Figs 5 and 6, method §9.3).

    The conditions end within a few points of each other near the top of the 0-100 % axis; the
    zoom (:func:`last_epochs_limits`, its region dashed on the full panel) separates them.
    """
    fig, (ax_acc, ax_zoom, ax_loss) = style.panels(3, width=4.0, height=3.2, sharex=False, sharey=False)
    ax_loss.sharex(ax_acc)
    curves = []
    for condition, directory in aggregated.items():
        evaluation = style.read_table(directory, "evaluation")
        color, label = style.condition_color(condition), style.condition_legend(condition, directory)
        accuracy = style.measure_curve(evaluation, "test_accuracy", x="epoch")
        curves.append(pd.DataFrame({"epoch": accuracy["epoch"], "mean": 100 * accuracy["mean"],
                                    "sd": 100 * accuracy["sd"]}))
        for ax in (ax_acc, ax_zoom):
            style.plot_mean_sd(ax, curves[-1]["epoch"], curves[-1]["mean"], curves[-1]["sd"], color=color, label=label)
        loss = style.measure_curve(evaluation, "test_loss", x="epoch")
        style.plot_mean_sd(ax_loss, loss["epoch"], loss["mean"], loss["sd"], color=color, label=label)
    limits = last_epochs_limits(curves)
    if limits is not None:
        (x0, x1), (y0, y1) = limits
        ax_zoom.set(xlim=(x0, x1), ylim=(y0, y1))
        ax_acc.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="0.35", linestyle="--",
                                   linewidth=0.8))
        ax_zoom.set_title(f"Test accuracy, epochs {x0:g}–{x1:g}")
    else:
        ax_zoom.set_title("Test accuracy (no later epochs to zoom on)")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_zoom.set(xlabel="epoch")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel=r"test loss per image, $\frac{1}{2}\|Y^* - Y\|^2$", title="Test loss (log scale)")
    for ax in (ax_acc, ax_zoom, ax_loss):
        style.integer_ticks(ax)
    style.legend_below(fig, [ax_acc])
    fig.suptitle("MNIST test set over training (mean ± sd over seeds)")
    return style.save_figure(fig, out_stem, formats)


def plot_update_angle(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                      formats: Sequence[str] = ("png", "pdf"), window: int = 60) -> list[Path]:
    """∠(ΔW_l^FA, ΔW_l^BP) vs iteration per layer l = 0..d-1 (paper Fig 8), causal moving average.

    Both updates are computed on the same minibatch and state before each step. The mean and
    the across-seed sd are each passed through a causal moving average of ``window`` iterations
    (config ``figures.moving_average``; the first points average over what exists), so the band
    shows the typical seed-to-seed spread of the per-iteration angle.
    """
    tables, layers = style.per_layer_conditions(aggregated, "angle_dWfa_dWbp_")
    fig, axes = style.panels(len(layers), ncols=min(len(layers), 5), width=2.9)
    for ax, l in zip(axes, layers):
        for condition, table in tables.items():
            curve = style.measure_curve(table, f"angle_dWfa_dWbp_{l}")
            mean = style.causal_moving_average(curve["mean"].to_numpy(), window)
            sd = style.causal_moving_average(curve["sd"].to_numpy(), window)
            style.plot_mean_sd(ax, curve["iteration"], mean, sd, color=style.condition_color(condition),
                               label=style.condition_legend(condition, aggregated[condition]))
        style.chance_line(ax)
        ax.set(title=f"$\\Delta W_{l}$", xlabel="iteration")
    axes[0].set_ylabel(r"$\angle(\Delta W_l^{FA}, \Delta W_l^{BP})$ (degrees)")
    style.legend_below(fig, axes)
    fig.suptitle(f"Angle between FA and BP updates on the same minibatch "
                 f"(causal moving average over {window} iterations; mean ± sd over seeds)")
    return style.save_figure(fig, out_stem, formats)
