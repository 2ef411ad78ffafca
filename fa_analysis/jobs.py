"""What the workflow's jobs (:mod:`fa_analysis.cli`) and the Python entry points
(:mod:`fa_analysis.api`) share, one floor below both: the package's log and the observers a run
spec asks for.

Like ``cli``, this module is in no code hash (docs/design.md, "Job glue and the code hashes"):
:func:`observers_of` only maps a spec's observer names to their classes, and the modules of those
classes are in the hash of every run that names them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

#: The package's logger: a job's log file receives its INFO lines (``cli.job_log``).
log = logging.getLogger("fa_analysis")


def observers_of(spec: Mapping, true_labels=None) -> list:
    """The observers a run spec asks for (``spec["observers"]``), each reading its own settings.

    ``true_labels`` (the clean training labels) lets the alignment-term similarity group a
    label-noise run's minibatches by their true classes as well as by the trained labels.
    """
    from fa_analysis.alignment_terms import AlignmentTermsObserver
    from fa_analysis.remainder import RemainderObserver
    from fa_analysis.shadow import ShadowObserver

    known = {
        "alignment_terms": lambda: AlignmentTermsObserver(true_labels=true_labels),
        "shadow": ShadowObserver,
        "remainder": RemainderObserver,
    }
    unknown = set(spec["observers"]) - set(known)
    if unknown:
        raise ValueError(f"run spec names unknown observers {sorted(unknown)}; known: {sorted(known)}")
    return [known[name]() for name in spec["observers"]]
