"""Weight alignment in error backpropagation through arbitrary weights (BP-TAW / feedback alignment).

One module per concept: ``data`` (MNIST, codes, label shuffling), ``network`` (forward pass and
the learning rules), ``normalization`` (WN, IBN), ``measures`` (angles), ``train`` (the training
loop and its per-iteration metrics), ``artifacts`` (atomic, self-describing outputs),
``alignment_terms`` and ``shadow`` (method §6), ``open_loop`` (section 7), ``outcome`` (whether
a run completed, diverged or collapsed), ``aggregate``, ``embedding`` and ``figures`` (sections 8
and 9).

From Python (``api``, imported on first use so that ``import fa_analysis`` stays light):
``train_one`` trains one run in memory, ``load_run`` reads a run directory, ``load_results``
reads the workflow's results folder as pandas tables.
"""

__version__ = "0.1.0"

#: Names of ``fa_analysis.api`` that the package re-exports (imported when first used).
_API = ("train_one", "load_run", "load_results", "TrainResult", "Results")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from fa_analysis import api

        return getattr(api, name)
    raise AttributeError(f"module 'fa_analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
