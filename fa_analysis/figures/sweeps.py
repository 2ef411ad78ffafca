"""The sensitivity figure of a sweep (method §12): a metric against one swept field.

One panel per base condition (titled with its learning rule, so BP and FA are told apart), the
chosen field's values along x in the order of the grid, one line per combination of the other
fields' values (the same colour and marker in every panel): the median over seeds with bars from
the minimum to the maximum, the study's form. Drawn from the sweep's ``points.csv`` and
``sweep.json`` (:mod:`fa_analysis.sweep_table`).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.lines import Line2D

from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike

#: Axis and legend names of the grid fields.
FIELD_LABELS = {
    "gamma": "γ (none: no WN)", "wn": "WN", "eta": "η", "ibn": "IBN", "label_smoothing": "label smoothing s",
    "init_std": "init std", "bias": "bias", "activation": "activation", "hidden": "hidden widths",
    "width": "hidden width", "depth": "hidden layers", "batch_size": "batch size",
}
#: The metrics the figure may draw: (axis label, scale, chance level or None).
METRICS = {
    "last_epochs_test_accuracy": ("test accuracy (%),\nmean of the last {k} epoch{s}", 100.0, 10.0),
    "final_test_accuracy": ("final test accuracy (%)", 100.0, 10.0),
    "best_test_accuracy": ("best test accuracy (%)", 100.0, 10.0),
    "angle_W_Bt_all": (r"final $\angle(W, B^\top)$ (degrees),"
                       "\nlayers 1..d-1 concatenated", 1.0, 90.0),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_sweep(inputs: Mapping[str, PathLike], out_stem: PathLike, formats: Sequence[str] = ("png", "pdf"),
               metric: str = "last_epochs_test_accuracy", x: str | None = None) -> list[Path]:
    """Draw ``metric`` of a sweep against grid field ``x`` (None: the grid's first field).

    ``inputs`` holds ``points`` (``sweeps/{name}/points.csv``) and ``meta`` (``sweep.json``).
    A point without a finite value (every run diverged) has no marker; each panel's title counts its
    diverged and collapsed runs.
    """
    from fa_analysis.sweep_table import read_points

    meta = json.loads(Path(inputs["meta"]).read_text())
    fields: dict[str, list[str]] = meta["fields"]
    if metric not in METRICS:
        raise ValueError(f"sweep figure: no metric {metric!r}; the metrics are {sorted(METRICS)}")
    x = x or next(iter(fields))
    if x not in fields:
        raise ValueError(f"sweep figure: x = {x!r} is not a field of the grid ({', '.join(fields)})")
    points = read_points(inputs["points"], fields)
    points = points[points["measure"] == metric]
    others = [field for field in fields if field != x]
    combinations = list(itertools.product(*(fields[field] for field in others)))
    bases = list(dict.fromkeys(point["base"] for point in meta["points"].values()))
    rules = {point["base"]: point["rule"] for point in meta["points"].values()}
    ylabel, scale, chance = METRICS[metric]

    fig, axes = style.panels(len(bases), width=3.6, height=3.0, sharex=False, sharey=True)
    colors = [style.EXTRA_COLORS[i % len(style.EXTRA_COLORS)] for i in range(len(combinations))] \
        if len(combinations) > 1 else ["0.15"]
    positions = np.arange(len(fields[x]), dtype=np.float64)
    dodge = 0.3 / max(len(combinations), 1)
    for ax, base in zip(axes, bases):
        here = points[points["base"] == base]
        for i, combination in enumerate(combinations):
            line = here
            for field, label in zip(others, combination):
                line = line[line[field] == label]
            by_x = line.set_index(x).reindex(fields[x])
            offset = (i - (len(combinations) - 1) / 2) * dodge
            median, low, high = (scale * by_x[column].to_numpy(dtype=np.float64) for column in ("median", "min", "max"))
            ax.errorbar(positions + offset, median, yerr=[median - low, high - median], color=colors[i],
                        marker=MARKERS[i % len(MARKERS)], markersize=4, capsize=2.5, linewidth=1.2)
        ax.set_xticks(positions, fields[x])
        ax.set_xlabel(FIELD_LABELS.get(x, x))
        if chance is not None:
            ax.axhline(chance, color="0.5", linestyle=":", linewidth=0.9, zorder=0)
        counts = here.drop_duplicates("condition")[["n_diverged", "n_collapsed"]].sum()
        notes = [f"{int(counts[c])} {c.removeprefix('n_')}" for c in ("n_diverged", "n_collapsed") if counts[c]]
        title = f"{rules[base].upper()} ({base})"
        ax.set_title(f"{title}\n{', '.join(notes)} runs" if notes else title)
    axes[0].set_ylabel(ylabel.format(k=meta["last_epochs"], s="" if meta["last_epochs"] == 1 else "s"))
    if others:
        handles = [Line2D([], [], color=colors[i], marker=MARKERS[i % len(MARKERS)], markersize=4,
                          label=", ".join(_legend_entry(f, v) for f, v in zip(others, combination)))
                   for i, combination in enumerate(combinations)]
        style.legend_below(fig, axes, handles=handles, labels=[h.get_label() for h in handles],
                           ncol=min(len(handles), 4))
    seeds = points["n"]
    counted = f"{seeds.min()}–{seeds.max()}" if len(seeds) and seeds.min() != seeds.max() else \
        (f"{seeds.max()}" if len(seeds) else "no")
    plural = "" if counted == "1" else "s"
    fig.suptitle(f"Sweep {meta['sweep']} ({meta['protocol']} protocol)\nmedian and min–max over {counted} seed{plural}")
    return style.save_figure(fig, out_stem, formats)


def _legend_entry(field: str, label: str) -> str:
    """``γ = 0.5``, ``no WN`` (γ none), ``η = 3e-4``: one field's value in a line's legend entry."""
    if field == "gamma":
        return "no WN" if label == "none" else f"γ = {label}"
    return f"{FIELD_LABELS.get(field, field)} = {label}"
