"""Figures of learning with noisy or changed labels (method §9.8, §8): final accuracy and angles
against the label-noise level, and accuracy and alignment through the label change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from fa_analysis import aggregate
from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike


def plot_label_noise(aggregated: Mapping[str, Mapping[int, PathLike]], out_stem: PathLike,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Final test accuracy and final ∠(W_l, B_lᵀ) vs the label-noise level p, one colour per condition
    (method §8).

    ``aggregated`` maps condition -> {p (percent of training labels replaced) ->
    ``aggregated/label_noise/{condition}_p{p}``}. Points are means over the finished seeds (every run
    but the diverged ones: a collapse, method §5.6, is part of what the noise does) with sd error
    bars (from each level's runs.csv); a level whose runs all diverged has no point, and the legend
    names it.
    """
    runs = pd.concat([aggregate.read_runs_csv(directory).assign(noise_condition=condition, level=float(level))
                      for condition, levels in aggregated.items() for level, directory in levels.items()],
                     ignore_index=True)
    finished = runs[runs["status"] != "diverged"]
    layers = sorted(int(c.removeprefix("angle_W_Bt_")) for c in runs.columns
                    if c.startswith("angle_W_Bt_") and c.removeprefix("angle_W_Bt_").isdigit())
    fig, axes = style.panels(1 + len(layers), width=2.7, height=2.8, sharey=False)
    for ax in axes[2:]:
        ax.sharey(axes[1])  # the angle panels share a scale; accuracy has its own
    panels = [(axes[0], "final_test_accuracy", 100.0)] + [(ax, f"angle_W_Bt_{l}", 1.0) for ax, l in zip(axes[1:], layers)]
    handles = []
    for condition in aggregated:
        color = style.condition_color(condition)
        done = finished[finished["noise_condition"] == condition]
        for ax, column, scale in panels:
            stats = done.groupby("level")[column].agg(["mean", "std"]).reset_index()
            ax.errorbar(stats["level"], scale * stats["mean"], yerr=scale * stats["std"].fillna(0),
                        color=color, marker="o", markersize=4, capsize=3, linewidth=1.4)
        levels = runs[runs["noise_condition"] == condition]["level"]
        lost = sorted(set(levels) - set(done["level"]))
        label = style.condition_label(condition)
        if lost:
            label += f" (all runs diverged at p = {', '.join(f'{p:g}' for p in lost)} %)"
        handles.append(Line2D([], [], color=color, marker="o", markersize=4, label=label))
    axes[0].set_xticks(sorted(set(runs["level"])))  # the panels share x: every level, drawn or not
    axes[0].axhline(10, color="0.5", linestyle=":", linewidth=0.9)
    axes[0].set(xlabel="label noise p (%)", ylabel="final test accuracy (%)", title="Test accuracy")
    for ax, l in zip(axes[1:], layers):
        style.chance_line(ax)
        ax.set(xlabel="label noise p (%)", title=f"$\\angle(W_{l}, B_{l}^\\top)$")
    axes[1].set_ylabel("final angle (degrees)")
    style.legend_below(fig, axes, handles=handles, labels=[handle.get_label() for handle in handles])
    seeds = finished.groupby(["noise_condition", "level"]).size()
    counted = f"mean ± sd over {seeds.min()}+ finished seeds per point" if len(seeds) else "no run finished"
    fig.suptitle(f"Learning under label noise ({counted})")
    return style.save_figure(fig, out_stem, formats)


def plot_label_change(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                      formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Test accuracy and ∠(W, Bᵀ) over all layers through both phases of the label change (method §8).

    A new random code map is drawn at the phase boundary (dashed vertical line) and training goes on
    without re-initialising the network.
    """
    fig, (ax_acc, ax_angle) = style.panels(2, width=4.6, height=3.2, sharey=False)
    boundaries = set()
    for condition, directory in aggregated.items():
        color = style.condition_color(condition)
        label = style.with_divergence(style.settings_label(directory, condition), directory)
        evaluation = style.read_table(directory, "evaluation")
        accuracy = style.measure_curve(evaluation, "test_accuracy", x="epoch")
        style.plot_mean_sd(ax_acc, accuracy["epoch"], 100 * accuracy["mean"], 100 * accuracy["sd"],
                           color=color, label=label)
        later = evaluation[evaluation["phase"] > evaluation["phase"].min()]
        if len(later):
            boundaries.add(float(later["epoch"].min()))
        metrics = style.read_table(directory, "metrics")
        angle = style.measure_curve(metrics, "angle_W_Bt_all")
        style.plot_mean_sd(ax_angle, _fractional_epoch(angle), angle["mean"], angle["sd"], color=color, label=label)
    for ax in (ax_acc, ax_angle):
        for boundary in boundaries:
            ax.axvline(boundary, color="0.3", linestyle="--", linewidth=0.9)
    style.chance_line(ax_angle)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (new code map at dashed line)")
    ax_angle.set(xlabel="epoch", ylabel=r"$\angle(W, B^\top)$ (degrees)",
                 title="Alignment, layers 1..d-1 concatenated")
    for ax in (ax_acc, ax_angle):
        style.integer_ticks(ax)
    style.legend_below(fig, [ax_acc])
    fig.suptitle("Label change across time (mean ± sd over seeds)")
    return style.save_figure(fig, out_stem, formats)


def _fractional_epoch(curve: pd.DataFrame) -> np.ndarray:
    """Iteration -> epoch + fraction of the epoch done, from the table's epoch column."""
    iteration = curve["iteration"].to_numpy(dtype=np.float64)
    epoch = curve["epoch"].to_numpy(dtype=np.float64)
    per_epoch = pd.Series(iteration).groupby(epoch).agg(["min", "count"])
    start = per_epoch["min"].reindex(epoch).to_numpy()
    count = per_epoch["count"].reindex(epoch).to_numpy()
    return epoch + (iteration - start) / count
