"""Figures of the weight trajectories (method §9.7, §8): the joint PCA plane over its loss
landscape, and the UMAP embedding of the snapshots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.ticker import FuncFormatter

from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike


def _trajectory_label(method: str, status: str) -> str:
    """The legend label of one trajectory run, saying so when it diverged (its trajectory stops there)
    or collapsed (it finished far below its own best accuracy, method §5.6)."""
    label = style.condition_label(method)
    notes = {"diverged": " (its run diverged)", "collapsed": " (its run collapsed)"}
    return label + notes.get(status, "")


def plot_trajectory_pca(pca_npz: PathLike, out_stem: PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Trajectories on the joint PC1–PC2 plane over the loss landscape of that plane (method §8).

    ``pca_npz`` is ``embedding/trajectory_pca.npz`` (:func:`fa_analysis.embedding.pca_landscape`).
    Filled contours: summed training loss at the weights the plane's points map back to (log
    colour scale); lines: each method's snapshots (circle = first, square = last); crosses: B's
    reference points (the initial state with ``W_l := B_lᵀ``).
    """
    with np.load(pca_npz) as npz:
        data = {name: npz[name] for name in npz.files}
    style.set_style()
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
        color, label = style.condition_color(str(method)), _trajectory_label(str(method), str(status))
        ax.plot(points[:, 0], points[:, 1], color=color, linewidth=1.6, label=label)
        ax.plot(*points[0], marker="o", color=color, markersize=6, markeredgecolor="white")
        ax.plot(*points[-1], marker="s", color=color, markersize=6, markeredgecolor="white")
    for label, point in zip(data["reference_labels"], data["reference_points"]):
        method = str(label).removeprefix("B (").removesuffix(")")
        ax.plot(*point, marker="X", markersize=10, color=style.PALETTE.get(method, style.REFERENCE_COLOR),
                markeredgecolor=style.REFERENCE_COLOR, linestyle="none",
                label=f"B reference ({style.condition_label(method)})")
    ratio = data["explained_variance_ratio"]
    ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f} % of variance)", ylabel=f"PC2 ({100 * ratio[1]:.1f} % of variance)",
           title="Weight trajectories on the joint PCA plane (○ start, □ end)")
    fig.legend(loc="outside lower center", ncol=3, fontsize="small")
    return style.save_figure(fig, out_stem, formats)


def plot_trajectory_umap(umap_parquet: PathLike, out_stem: PathLike,
                         formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """UMAP of the trajectory snapshots of every method (method §8); start ○, end □."""
    table = pd.read_parquet(umap_parquet)
    style.set_style()
    fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
    for method, points in table.groupby("method", sort=False):
        points = points.sort_values("iteration")
        color, label = style.condition_color(str(method)), _trajectory_label(str(method), points["status"].iloc[0])
        ax.plot(points["umap_1"], points["umap_2"], color=color, linewidth=0.6, alpha=0.6)
        ax.scatter(points["umap_1"], points["umap_2"], color=color, s=5, label=label, rasterized=True)
        first, last = points.iloc[0], points.iloc[-1]
        ax.plot(first["umap_1"], first["umap_2"], marker="o", color=color, markersize=7, markeredgecolor="black")
        ax.plot(last["umap_1"], last["umap_2"], marker="s", color=color, markersize=7, markeredgecolor="black")
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title="UMAP of the weight trajectories (○ start, □ end)")
    ax.legend(loc="best", markerscale=3)
    return style.save_figure(fig, out_stem, formats)
