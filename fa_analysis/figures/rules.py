"""Figures of the rules experiment (method §8.4, §9.11): BP, FA, DFA and the rules the field compares
FA with, without and with WN: test accuracy and loss, alignment per layer, and the angle between each
rule's update and BP's.

Each takes ``aggregated``: condition -> its aggregated directory (``aggregated/rules/{condition}``, or
``aggregated/main/{condition}`` for a condition whose runs main has). A condition's rule and WN come
from its runs' shared settings (``aggregate.json``): one row of panels without WN, one with, one
colour per rule in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from fa_analysis.figures import style
from fa_analysis.figures.style import PathLike

#: One colour per rule, the same without and with WN (BP and FA keep the protocol's colours).
RULE_COLORS = {"bp": style.PALETTE["bp"], "fa": style.PALETTE["fa"], "dfa": "#7F7F7F", "usf": "#117733",
               "frsf": "#44AA99", "brsf": "#999933", "kp": "#332288", "drtp": "#AA4499"}
RULE_LABELS = {"bp": "BP", "fa": "FA", "dfa": "DFA", "usf": "uSF", "frsf": "frSF", "brsf": "brSF",
               "kp": "Kolen–Pollack", "drtp": "DRTP"}
#: Rules whose angle(W_l, B_l^T) is to a B they never use: a control, drawn dashed (method §1.6).
CONTROLS = ("bp", "dfa", "drtp")


def _settings(directory: PathLike) -> dict:
    return json.loads((Path(directory) / "aggregate.json").read_text()).get("settings", {})


def _rows(aggregated: Mapping[str, PathLike]) -> dict[bool, dict[str, PathLike]]:
    """The conditions by WN (``False`` first), in the given order; a row only where it has conditions."""
    rows: dict[bool, dict[str, PathLike]] = {False: {}, True: {}}
    for condition, directory in aggregated.items():
        rows[bool(_settings(directory).get("wn"))][condition] = directory
    return {wn: conditions for wn, conditions in rows.items() if conditions}


def _look(condition: str, directory: PathLike) -> dict:
    """Colour, line style and legend label of a condition from its rule and WN."""
    settings = _settings(directory)
    rule = settings.get("rule", condition)
    label = RULE_LABELS.get(rule, rule)
    if settings.get("wn"):
        label += f" + WN (γ = {settings['gamma']:g}{', IBN' if settings.get('ibn') else ''})"
    return {"color": RULE_COLORS.get(rule, style.condition_color(condition)),
            "label": style.with_divergence(f"{label} [{condition}]", directory), "rule": rule}


def _row_title(wn: bool) -> str:
    return "with WN" if wn else "without WN"


def plot_rules_accuracy_loss(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                             formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Test accuracy and test loss (log scale) against the epoch, one line per rule; a row without
    WN and one with WN."""
    rows = _rows(aggregated)
    fig, axes = style.panels(2 * len(rows), ncols=2, width=4.2, height=3.0, sharey=False)
    for r, (wn, conditions) in enumerate(rows.items()):
        ax_acc, ax_loss = axes[2 * r], axes[2 * r + 1]
        for condition, directory in conditions.items():
            look = _look(condition, directory)
            evaluation = style.read_table(directory, "evaluation")
            accuracy = style.measure_curve(evaluation, "test_accuracy", x="epoch")
            style.plot_mean_sd(ax_acc, accuracy["epoch"], 100 * accuracy["mean"], 100 * accuracy["sd"],
                               color=look["color"], label=look["label"])
            loss = style.measure_curve(evaluation, "test_loss", x="epoch")
            style.plot_mean_sd(ax_loss, loss["epoch"], loss["mean"], loss["sd"], color=look["color"], label=look["label"])
        ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"Test accuracy, {_row_title(wn)}")
        ax_loss.set_yscale("log")
        ax_loss.set(xlabel="epoch", ylabel="test loss per image", title=f"Test loss (log scale), {_row_title(wn)}")
        ax_acc.legend(fontsize="x-small", loc="lower right")
    fig.suptitle("The rules the field compares FA with: MNIST test set over training (mean ± sd over seeds)")
    return style.save_figure(fig, out_stem, formats)


def _per_layer(aggregated: Mapping[str, PathLike], prefix: str, out_stem: PathLike, formats: Sequence[str],
               ylabel: str, title: str, skip: Sequence[str] = (), window: int | None = None) -> list[Path]:
    """``{prefix}{l}`` against the iteration, one panel per layer, a row per WN setting, a line per rule."""
    rows = _rows({c: p for c, p in aggregated.items() if _look(c, p)["rule"] not in skip})
    if not rows:
        return style.note_figure(title, "no condition of this experiment has this measure", out_stem, formats)
    tables = {}
    for conditions in rows.values():
        found, _ = style.per_layer_conditions(conditions, prefix)
        tables.update(found)
    layers = sorted(set.intersection(*(set(style.layer_indices(t, prefix)) for t in tables.values())))
    fig, axes = style.panels(len(layers) * len(rows), ncols=len(layers), width=2.8, height=2.5)
    for r, (wn, conditions) in enumerate(rows.items()):
        for i, l in enumerate(layers):
            ax = axes[r * len(layers) + i]
            for condition, directory in conditions.items():
                look = _look(condition, directory)
                curve = style.measure_curve(tables[condition], f"{prefix}{l}")
                mean, sd = curve["mean"].to_numpy(), curve["sd"].to_numpy()
                if window:
                    mean, sd = style.causal_moving_average(mean, window), style.causal_moving_average(sd, window)
                style.plot_mean_sd(ax, curve["iteration"], mean, sd, color=look["color"], label=look["label"],
                                   linestyle="--" if look["rule"] in CONTROLS and prefix == "angle_W_Bt_" else "-")
            style.chance_line(ax)
            ax.set(title=f"layer {l}, {_row_title(wn)}", xlabel="iteration")
        axes[r * len(layers)].set_ylabel(ylabel)
        axes[r * len(layers)].legend(fontsize="xx-small", loc="lower left")
    fig.suptitle(title)
    return style.save_figure(fig, out_stem, formats)


def plot_rules_angle_W_Bt(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                          formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """∠(W_l, B_lᵀ) per hidden layer, to the feedback in use at each step (method §1.6); BP, DFA and
    DRTP dashed: their B is one they never use, a control near 90°."""
    return _per_layer(aggregated, "angle_W_Bt_", out_stem, formats, r"$\angle(W_l, B_l[k]^\top)$ (degrees)",
                      "Alignment with the feedback in use (dashed: a B the rule never uses; mean ± sd over seeds)")


def plot_rules_update_angle(aggregated: Mapping[str, PathLike], out_stem: PathLike,
                            formats: Sequence[str] = ("png", "pdf"), window: int = 60) -> list[Path]:
    """∠(ΔW_l^rule, ΔW_l^BP) per layer on the same minibatch and state, causal moving average of
    ``window`` iterations (BP left out: 0 by definition)."""
    return _per_layer(aggregated, "angle_dWrule_dWbp_", out_stem, formats,
                      r"$\angle(\Delta W_l^{rule}, \Delta W_l^{BP})$ (degrees)",
                      f"Each rule's update against BP's on the same minibatch (causal moving average over "
                      f"{window} iterations; mean ± sd over seeds)", skip=("bp",), window=window)
