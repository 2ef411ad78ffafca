"""Every figure of method §9, drawn from aggregated results (mean ± sd shading over seeds).

One public ``plot_*`` function per figure name of the output layout; each takes the paths of the
aggregated tables it needs, an output stem (``figures/{name}``, no suffix) and the formats
(config ``figures.formats``), writes ``{stem}.{format}`` atomically and returns the paths.

One module per family of figures, all on :mod:`~fa_analysis.figures.style` (palette, labels,
bands, panels, saving, and the conventions every figure keeps):

- :mod:`~fa_analysis.figures.training`: the main runs over training (§9.2, §9.3, §9.5);
- :mod:`~fa_analysis.figures.mechanisms`: alignment terms, shadow weights, remainder, similarity
  (§9.4, §9.6);
- :mod:`~fa_analysis.figures.toy`: the open loop and the closed two-layer net (§9.1, §9.10);
- :mod:`~fa_analysis.figures.toy_geometry`: the toy Monte Carlo analyses (§9.10);
- :mod:`~fa_analysis.figures.embeddings`: the weight trajectories (§9.7);
- :mod:`~fa_analysis.figures.labels`: label noise and label change (§9.8);
- :mod:`~fa_analysis.figures.rules`: the rules experiment (§9.11).
- :mod:`~fa_analysis.figures.sweeps`: the sensitivity figure of each sweep (§12).

The workflow's figure job finds ``plot_{name}`` here and passes it :func:`figure_inputs`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from fa_analysis.figures import style
from fa_analysis.figures.embeddings import plot_trajectory_pca, plot_trajectory_umap
from fa_analysis.figures.labels import plot_label_change, plot_label_noise
from fa_analysis.figures.mechanisms import (
    plot_alignment_terms_lag,
    plot_alignment_terms_time,
    plot_remainder,
    plot_shadow_linearised,
    plot_shadow_random_b,
    plot_similarity,
)
from fa_analysis.figures.rules import plot_rules_accuracy_loss, plot_rules_angle_W_Bt, plot_rules_update_angle
from fa_analysis.figures.style import (
    CONDITION_LABELS,
    EXTRA_COLORS,
    PALETTE,
    SCENARIO_COLORS,
    SCENARIO_LABELS,
    SERIES_COLORS,
    VARIANT_COLORS,
    VARIANT_LABELS,
    causal_moving_average,
    measure_curve,
    plot_mean_sd,
    read_table,
    save_figure,
)
from fa_analysis.figures.sweeps import plot_sweep
from fa_analysis.figures.toy import (
    plot_open_loop,
    plot_open_loop_beta,
    plot_toy_autocorrelation,
    plot_toy_closed_net,
    plot_toy_closed_net_wn,
)
from fa_analysis.figures.toy_geometry import (
    plot_toy_depth,
    plot_toy_distributions,
    plot_toy_term_geometry,
    plot_toy_term_spectrum,
)
from fa_analysis.figures.training import plot_accuracy_loss, plot_angle_W_Bt, plot_update_angle

__all__ = [
    "CONDITION_LABELS", "EXTRA_COLORS", "PALETTE", "SCENARIO_COLORS", "SCENARIO_LABELS", "SERIES_COLORS",
    "VARIANT_COLORS", "VARIANT_LABELS", "causal_moving_average", "figure_inputs", "measure_curve",
    "plot_accuracy_loss", "plot_alignment_terms_lag", "plot_alignment_terms_time", "plot_angle_W_Bt",
    "plot_label_change", "plot_label_noise", "plot_mean_sd", "plot_open_loop", "plot_open_loop_beta",
    "plot_remainder", "plot_rules_accuracy_loss", "plot_rules_angle_W_Bt", "plot_rules_update_angle", "plot_shadow_linearised", "plot_sweep", "plot_shadow_random_b", "plot_similarity",
    "plot_toy_autocorrelation", "plot_toy_closed_net", "plot_toy_closed_net_wn", "plot_toy_depth", "plot_toy_distributions", "plot_toy_term_geometry", "plot_toy_term_spectrum",
    "plot_trajectory_pca", "plot_trajectory_umap", "plot_update_angle", "read_table", "save_figure", "style",
]


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
