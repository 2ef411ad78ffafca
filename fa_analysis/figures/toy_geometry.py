"""Figures of the toy Monte Carlo analyses (method §9.10, §11.1, §11.2, §11.5).

Each draws one table of ``toy/``: the angle of the linear alignment term per shape mode and its
spectrum, the angle under changed signal statistics, and the angle of products of matrices.
Distributions are drawn over the Monte Carlo samples (violins with the median marked); the depth
figure draws the grid's mean angle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike

INPUT_COLORS = {"linear": "#332288", "relu": "#CC6677"}
INPUT_LABELS = {"linear": "X Gaussian", "relu": "relu(X)"}
PRODUCT_LABELS = {"linear": "AB vs CD", "masked": "A diag(m) B vs C diag(m) D"}
TERM_LABEL = r"$\angle(B^\top M,\ B^\top)$ (degrees)"


def _violins(ax, groups: Sequence[np.ndarray], positions: Sequence[float], color: str, width: float = 0.38):
    """One violin per group of samples, with its median as a white tick."""
    parts = ax.violinplot(groups, positions=positions, widths=width, showextrema=False)
    for body in parts["bodies"]:
        body.set(facecolor=color, edgecolor=color, alpha=0.55)
    medians = [float(np.median(group)) for group in groups]
    ax.scatter(positions, medians, color="white", edgecolor=color, s=18, zorder=3)
    return medians


def plot_toy_term_geometry(inputs: Mapping[str, PathLike], out_stem: PathLike,
                           formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The angle of one linear term, ``∠(BᵀM, Bᵀ)`` with ``M = EᵀXXᵀE``, per shape mode (method §11.1).

    ``inputs["angles"]``: ``toy/term_geometry.parquet`` (columns mode, n_i, n_h, n_o, n_b, input,
    sample, angle). One violin per mode and input (X Gaussian, and through a ReLU).
    """
    table = pd.read_parquet(inputs["angles"])
    modes = list(dict.fromkeys(table["mode"]))
    fig, (ax,) = style.panels(1, width=7.2, height=3.6)
    for offset, x in ((-0.2, "linear"), (0.2, "relu")):
        groups = [table[(table["mode"] == m) & (table["input"] == x)]["angle"].to_numpy() for m in modes]
        _violins(ax, groups, np.arange(len(modes)) + offset, INPUT_COLORS[x])
        ax.plot([], [], color=INPUT_COLORS[x], linewidth=6, alpha=0.55, label=INPUT_LABELS[x])
    shapes = table.drop_duplicates("mode").set_index("mode")
    ax.set_xticks(np.arange(len(modes)), [
        f"{m}\n{shapes.loc[m, 'n_i']}, {shapes.loc[m, 'n_h']}, {shapes.loc[m, 'n_o']}, {shapes.loc[m, 'n_b']}"
        for m in modes
    ], fontsize=7)
    style.chance_line(ax)
    n = int(table.groupby(["mode", "input"]).size().min())
    ax.set(ylabel=TERM_LABEL, xlabel=r"mode: $n_i, n_h, n_o, n_b$",
           title=f"One alignment term with identical data, $M = E^\\top X X^\\top E$ ({n} samples per violin)")
    ax.legend(loc="lower right")
    return style.save_figure(fig, out_stem, formats)


def plot_toy_term_spectrum(inputs: Mapping[str, PathLike], out_stem: PathLike,
                           formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The eigenvalue histograms of ``EᵀXXᵀE / (n_b n_i)`` per mode, X Gaussian and through a ReLU (§11.1).

    ``inputs["spectrum"]``: ``toy/term_spectrum.parquet`` (mode, input, lower, upper, count,
    density, rank, n_above, largest). The panel title gives the rank of ``M`` and, where eigenvalues
    lie beyond the drawn range, how many and the largest.
    """
    table = pd.read_parquet(inputs["spectrum"])
    modes = list(dict.fromkeys(table["mode"]))
    fig, axes = style.panels(len(modes), ncols=3, width=3.0, height=2.4, sharex=False, sharey=False)
    for ax, mode in zip(axes, modes):
        rows = table[table["mode"] == mode]
        notes = []
        for x in ("linear", "relu"):
            hist = rows[rows["input"] == x]
            if hist.empty:
                continue
            ax.stairs(hist["density"], np.append(hist["lower"].to_numpy(), hist["upper"].iloc[-1]),
                      color=INPUT_COLORS[x], label=INPUT_LABELS[x], linewidth=1.2)
            if int(hist["n_above"].iloc[0]):
                notes.append(f"{INPUT_LABELS[x]}: {int(hist['n_above'].iloc[0])} beyond, max {hist['largest'].iloc[0]:.3g}")
        ax.set_title(f"{mode} (rank of M: {int(rows['rank'].iloc[0])})", fontsize=8)
        if notes:
            ax.text(0.98, 0.95, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=6)
        ax.set_xlabel(r"eigenvalue of $M / (n_b n_i)$")
    axes[0].set_ylabel("density")
    style.legend_below(fig, axes, ncol=2)
    fig.suptitle(r"Spectrum of $M = E^\top X X^\top E$, scaled by $n_b n_i$")
    return style.save_figure(fig, out_stem, formats)


def plot_toy_distributions(inputs: Mapping[str, PathLike], out_stem: PathLike,
                           formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """``∠(BᵀM, Bᵀ)`` with ``M = P₁ᵀP₂`` of two minibatches, per case of signal statistics (method §11.2).

    ``inputs["distributions"]``: ``toy/distributions.parquet`` (columns case, sample, angle).
    """
    table = pd.read_parquet(inputs["distributions"])
    cases = list(dict.fromkeys(table["case"]))
    fig, (ax,) = style.panels(1, width=7.2, height=3.4)
    groups = [table[table["case"] == case]["angle"].to_numpy() for case in cases]
    medians = _violins(ax, groups, np.arange(len(cases)), "#117733", width=0.7)
    for position, median in enumerate(medians):
        ax.annotate(f"{median:.1f}°", (position, median), xytext=(9, 0), textcoords="offset points",
                    fontsize=7, va="center")
    ax.set_xticks(np.arange(len(cases)), [case.replace("_", " ") for case in cases], fontsize=8)
    style.chance_line(ax)
    ax.set(ylabel=TERM_LABEL, title=f"One term between two minibatches, $M = E_1^\\top X_1 X_2^\\top E_2$ "
                                    f"({min(len(g) for g in groups)} samples per case)")
    return style.save_figure(fig, out_stem, formats)


def plot_toy_depth(inputs: Mapping[str, PathLike], out_stem: PathLike,
                   formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """``∠(AB, CD)`` against ``∠(A, C)`` and ``∠(B, D)``: heat maps of the mean, and the diagonal (§11.5).

    ``inputs["depth"]``: ``toy/depth.parquet`` (product, angle_A_C, angle_B_D, mean, sd, ...). The
    diagonal panel draws ``∠(A, C) = ∠(B, D) = θ`` with the identity and the product of cosines,
    ``arccos(cos² θ)``, dashed.
    """
    table = pd.read_parquet(inputs["depth"])
    products = list(dict.fromkeys(table["product"]))
    fig, axes = style.panels(len(products) + 1, width=3.5, height=3.2, sharex=False, sharey=False)
    image = None
    for ax, product in zip(axes, products):
        grid = table[table["product"] == product].pivot(index="angle_B_D", columns="angle_A_C", values="mean")
        image = ax.imshow(grid.to_numpy(), origin="lower", cmap="viridis", vmin=0, vmax=90, aspect="auto")
        ticks = np.arange(len(grid.columns))
        step = max(1, len(ticks) // 5)
        ax.set_xticks(ticks[::step], [f"{a:g}" for a in grid.columns[::step]])
        ax.set_yticks(np.arange(len(grid.index))[::step], [f"{a:g}" for a in grid.index[::step]])
        ax.set(xlabel=r"$\angle(A, C)$", ylabel=r"$\angle(B, D)$", title=PRODUCT_LABELS.get(product, product))
    fig.colorbar(image, ax=list(axes[:-1]), label=r"mean $\angle$ of the products (degrees)", shrink=0.85)
    ax = axes[-1]
    for product in products:
        diagonal = table[(table["product"] == product) & (table["angle_A_C"] == table["angle_B_D"])]
        diagonal = diagonal.sort_values("angle_A_C")
        style.plot_mean_sd(ax, diagonal["angle_A_C"], diagonal["mean"], diagonal["sd"],
                           color="#332288" if product == "linear" else "#CC6677",
                           label=PRODUCT_LABELS.get(product, product))
    theta = np.linspace(0, 90, 91)
    ax.plot(theta, theta, color="black", linewidth=0.8, label="identity")
    ax.plot(theta, np.degrees(np.arccos(np.cos(np.radians(theta)) ** 2)), color="black", linestyle="--",
            linewidth=0.8, label=r"$\arccos(\cos^2\theta)$")
    ax.set(xlabel=r"$\theta = \angle(A, C) = \angle(B, D)$", ylabel=r"$\angle(AB, CD)$ (degrees)",
           title="Both factors at θ (mean ± sd)")
    ax.legend(loc="lower right", fontsize=7)
    n = int(table["n"].min())
    fig.suptitle(f"Products of two matrices at prescribed angles (at least {n} samples per cell)")
    return style.save_figure(fig, out_stem, formats)
