"""What became of a run: ``completed``, ``diverged`` or ``collapsed`` (method §5.6).

A run stopped by a non-finite loss or weight is ``diverged`` (run.json's status). A run that
finished can still have lost what it learned without anything going non-finite: it is
``collapsed`` when, in some phase (§4.4), its test accuracy at the end of that phase lies more than
``collapse_margin`` (config ``analysis.collapse_margin``, a fraction of the test set: 0.1 is 10
percentage points) below the best accuracy of that phase. The test looks at each phase on its own,
so the fall at a label change, where a new code map is read, is no collapse, while a run that
collapses before the remap and stays at chance after it is one. Everything is read from the run's
evaluation table; no torch, so the aggregation and the embeddings (which both label runs by their
outcome) share this one definition.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fa_analysis import settings

STATUSES = ("completed", "collapsed", "diverged")
#: A fall equal to the margin up to the rounding of the accuracies (1/test images) is no collapse.
TOLERANCE = 1e-9


def default_margin() -> float:
    """``analysis.collapse_margin`` of the schema (the protocol's value)."""
    return float(settings.schema_defaults("analysis")["collapse_margin"])


def check_margin(margin: float) -> float:
    """The margin as a float in [0, 1]; raises ``ValueError`` naming the config key."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
        raise ValueError(f"analysis.collapse_margin must be a number in [0, 1] (a fraction of the test set), "
                         f"got {margin!r}")
    return float(margin)


def best_evaluation(evaluation: pd.DataFrame) -> tuple[float, int | None]:
    """The highest finite test accuracy of the run and the epoch of it (the first, if reached twice);
    ``(nan, None)`` without a finite evaluation."""
    accuracy = evaluation["test_accuracy"].to_numpy(dtype="float64")
    finite = np.flatnonzero(np.isfinite(accuracy))
    if not len(finite):
        return math.nan, None
    best = finite[np.argmax(accuracy[finite])]
    return float(accuracy[best]), int(evaluation["epoch"].iloc[best])


def accuracy_drop(evaluation: pd.DataFrame) -> float:
    """The largest fall, over the phases, from a phase's best test accuracy to its last evaluation.

    ``0`` for a run that ends every phase at its best; NaN without a finite evaluation. The last
    evaluation of a phase is its end: at a phase boundary the table holds the end of the old phase
    under the old code map and the start of the new one under the new map (§4.4).
    """
    finite = evaluation[np.isfinite(evaluation["test_accuracy"].to_numpy(dtype="float64"))]
    if not len(finite):
        return math.nan
    by_phase = finite.groupby("phase", sort=True)["test_accuracy"]
    return float((by_phase.max() - by_phase.last()).max())


def run_status(status: str, evaluation: pd.DataFrame, margin: float) -> str:
    """``diverged`` stays diverged; a completed run whose ``accuracy_drop`` exceeds ``margin`` is
    ``collapsed``, any other ``completed``."""
    margin = check_margin(margin)
    if status != "completed":
        return status
    drop = accuracy_drop(evaluation)
    return "collapsed" if drop > margin + TOLERANCE else "completed"
