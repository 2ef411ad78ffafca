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


# --------------------------------------------------------------------------------------------
# The closed two-layer net with an imposed error (method §11.3, §11.4)

REGIME_COLORS = {"fixed": "#009E73", "every_2": "#332288", "every_3": "#44AA99", "every_1": "#7F7F7F",
                 "shifted_fresh": "#882255"}
WN_COLORS = {None: style.PALETTE["fa"], 1.0: style.PALETTE["fa_wn"], 0.7: "#AA4499"}
ANGLE_W1 = r"$\angle(W_1, B_1^\top)$ (degrees)"


def _regime_color(regime: str) -> str:
    return REGIME_COLORS.get(regime, style.condition_color(regime))


def _wn_label(wn: bool, gamma: float) -> str:
    return f"WN (γ = {gamma:g})" if wn else "no WN"


def _repetition_curve(table: pd.DataFrame, column: str, keys: Sequence[str]) -> pd.DataFrame:
    """Mean, sd and n over repetitions of ``column`` per ``keys`` (NaN left out)."""
    return (table.groupby(list(keys))[column].agg(["mean", "std", "count"])
            .rename(columns={"std": "sd", "count": "n"}).reset_index())


def plot_toy_closed_net(inputs: Mapping[str, PathLike], out_stem: PathLike,
                        formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_1, B_1ᵀ) and the live outputs over iterations per error regime of the closed net (§11.3).

    ``inputs["regimes"]``: ``toy/closed_net_regimes.parquet`` (regime, wn, gamma, repetition,
    iteration, angle_W1_B1t, live_outputs). Mean ± sd over repetitions.
    """
    table = pd.read_parquet(inputs["regimes"])
    fig, axes = style.panels(2, width=4.4, height=3.2, sharex=True, sharey=False)
    for regime in dict.fromkeys(table["regime"]):
        rows = table[table["regime"] == regime]
        for ax, column in zip(axes, ("angle_W1_B1t", "live_outputs")):
            curve = _repetition_curve(rows, column, ["iteration"])
            style.plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"], color=_regime_color(regime),
                               label=regime.replace("_", " "))
    style.chance_line(axes[0])
    n = int(table.groupby(["regime", "iteration"]).size().min())
    axes[0].set(xlabel="iteration", ylabel=ANGLE_W1, title="Alignment of the output layer")
    axes[1].set(xlabel="iteration", ylabel="live output units", title=r"Outputs with $Z_2 > 0$ on some row")
    style.legend_below(fig, axes, ncol=4)
    fig.suptitle(f"Closed net with an imposed error, $\\delta_2 = E \\odot$ relu$'(Z_2)$ (mean ± sd, {n} repetitions)")
    return style.save_figure(fig, out_stem, formats)


def plot_toy_closed_net_wn(inputs: Mapping[str, PathLike], out_stem: PathLike,
                           formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_1, B_1ᵀ) over iterations without and with WN, one panel per regime (§11.3, S1).

    ``inputs["wn"]``: ``toy/closed_net_wn.parquet``. Mean ± sd over repetitions.
    """
    table = pd.read_parquet(inputs["wn"])
    regimes = list(dict.fromkeys(table["regime"]))
    fig, axes = style.panels(len(regimes), width=3.8, height=3.0, sharey=True)
    for ax, regime in zip(axes, regimes):
        rows = table[table["regime"] == regime]
        for (wn, gamma), group in rows.groupby(["wn", rows["gamma"].fillna(-1.0)], sort=False):
            gamma = None if gamma < 0 else float(gamma)
            curve = _repetition_curve(group, "angle_W1_B1t", ["iteration"])
            color = WN_COLORS.get(gamma, style.condition_color(f"gamma{gamma}"))
            style.plot_mean_sd(ax, curve["iteration"], curve["mean"], curve["sd"], color=color,
                               label=_wn_label(bool(wn), gamma or 0.0))
        style.chance_line(ax)
        ax.set(xlabel="iteration", title=f"E redrawn: {regime.replace('_', ' ')}")
    axes[0].set_ylabel(ANGLE_W1)
    style.legend_below(fig, [axes[0]], ncol=3)
    n = int(table.groupby(["regime", "wn", "iteration"]).size().min())
    fig.suptitle(f"Closed net: WN on $W_0$ and $W_1$ (mean ± sd, at least {n} repetitions)")
    return style.save_figure(fig, out_stem, formats)


def plot_toy_autocorrelation(inputs: Mapping[str, PathLike], out_stem: PathLike,
                             formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Final ∠(W_1, B_1ᵀ) and final ∠(ΔW_0^FA, ΔW_0^BP) against β, the error or the input graded (§11.4).

    ``inputs``: ``{sweep}_wn{0,1}`` -> ``toy/autocorrelation_{sweep}_wn{0,1}.parquet`` (sweep, beta,
    wn, repetition, iteration, angle_W1_B1t, angle_dW0fa_dW0bp, live_outputs). One row of panels
    per sweep; points are means ± sd over repetitions at the last iteration (a repetition whose
    outputs all died has no ΔW_0 and no update angle: the count is in the title).
    """
    table = pd.concat([pd.read_parquet(path) for path in inputs.values()], ignore_index=True)
    sweeps = [sweep for sweep in ("error", "input") if sweep in set(table["sweep"])]
    fig, axes = style.panels(2 * len(sweeps), ncols=2, width=3.8, height=2.9, sharex=False, sharey=False)
    titles = {"error": r"$E_k = \beta E_{k-1} + (1-\beta)\,\xi_k$", "input": r"$X_k = \beta X_{k-1} + (1-\beta)\,\xi_k$"}
    for row, sweep in enumerate(sweeps):
        rows = table[table["sweep"] == sweep]
        final = rows[rows["iteration"] == rows["iteration"].max()]
        for wn, group in final.groupby("wn"):
            color = WN_COLORS[1.0] if wn else WN_COLORS[None]
            for ax, column in zip(axes[2 * row: 2 * row + 2], ("angle_W1_B1t", "angle_dW0fa_dW0bp")):
                stats = _repetition_curve(group, column, ["beta"])
                ax.errorbar(stats["beta"], stats["mean"], yerr=stats["sd"].fillna(0), color=color, marker="o",
                            markersize=4, capsize=3, linewidth=1.4,
                            label=f"{'WN' if wn else 'no WN'} (n ≥ {int(stats['n'].min())})")
        left, right = axes[2 * row], axes[2 * row + 1]
        left.set(ylabel=ANGLE_W1, title=f"{titles[sweep]}: final alignment")
        right.set(ylabel=r"$\angle(\Delta W_0^{FA}, \Delta W_0^{BP})$ (degrees)", title="final update angle")
        for ax in (left, right):
            style.chance_line(ax)
            ax.set_xlabel(r"$\beta$" if sweep == "error" else r"$\beta_X$ (error at $\beta_E$ fixed)")
            ax.legend(loc="lower left", fontsize=7)
    fig.suptitle("Closed net with graded auto-correlation (mean ± sd over repetitions, last iteration)")
    return style.save_figure(fig, out_stem, formats)
