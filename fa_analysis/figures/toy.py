"""Figures of the toy analyses, beginning with the open loop (method §9.1, §7).

The open loop trains only ``W_1`` of a 20-100-20 network against an imposed error ``δ₂``; its
tables hold one row per repetition and iteration, averaged here over the repetitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import seaborn as sns

from fa_analysis import aggregate
from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike


def plot_open_loop(scenario_tables: Mapping[str, PathLike], out_stem: PathLike,
                   formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_1, B_1ᵀ) vs iteration for the open-loop scenarios, mean ± sd over repetitions (paper Fig 3).

    ``scenario_tables`` maps scenario name -> ``open_loop/{scenario}.parquet``
    (columns repetition, iteration, angle).
    """
    fig, (ax,) = style.panels(1, width=5.6, height=3.4)
    for scenario, path in scenario_tables.items():
        curve = aggregate.open_loop_curve(pd.read_parquet(path), keys=["iteration"]).sort_values("iteration")
        n = int(curve["n"].max())
        style.plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"],
                           color=style.SCENARIO_COLORS.get(scenario, "black"),
                           label=f"{style.SCENARIO_LABELS.get(scenario, scenario)}")
    style.chance_line(ax)
    ax.set(xlabel="iteration", ylabel=r"$\angle(W_1, B_1^\top)$ (degrees)",
           title=f"Open loop 20-100-20: alignment of $W_1$ with $B_1^\\top$ (mean ± sd, {n} repetitions)")
    ax.legend(loc="lower left")
    return style.save_figure(fig, out_stem, formats)


def plot_open_loop_beta(sweep_tables: Mapping[bool, PathLike], out_stem: PathLike,
                        formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The β sweep of the open loop: final ∠(W_1, B_1ᵀ) vs β, without and with WN, and its time courses.

    ``sweep_tables`` maps wn (False / True) -> ``open_loop/beta_wn{0,1}.parquet`` (columns beta,
    repetition, iteration, angle). β sets the autocorrelation of the imposed error,
    ``δ₂[k] = β δ₂[k−1] + (1−β) ξ[k]``. Error bars and bands: sd over repetitions.
    """
    sweeps = {bool(wn): pd.read_parquet(path) for wn, path in sweep_tables.items()}
    fig, axes = style.panels(1 + len(sweeps), width=3.6, height=3.0, sharex=False, sharey=True)
    wn_colors = {False: style.PALETTE["fa"], True: style.PALETTE["fa_wn"]}
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
            style.plot_mean_sd(axes[panel], curve["iteration"], curve["mean"], curve["sd"], color=beta_colors[beta],
                               label=f"β = {beta:g}", alpha=0.12)
        style.chance_line(axes[panel])
        axes[panel].set(xlabel="iteration", title=f"Time course, {wn_labels[wn]}")
    style.legend_below(fig, axes[1:], ncol=len(betas))
    style.chance_line(axes[0])
    axes[0].set(xlabel=r"$\beta$ in $\delta_2[k] = \beta\,\delta_2[k-1] + (1-\beta)\,\xi[k]$", ylabel=r"$\angle(W_1, B_1^\top)$ (degrees)",
                title=r"Final angle vs $\beta$")
    axes[0].legend(loc="lower left")
    fig.suptitle("Open loop with graded error autocorrelation (mean ± sd over repetitions)")
    return style.save_figure(fig, out_stem, formats)
