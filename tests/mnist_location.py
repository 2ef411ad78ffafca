"""Where the tests find the real MNIST files, in torchvision's layout ``{root}/MNIST/raw/*-ubyte``.

The order: ``FA_MNIST_ROOT`` when set and not empty (the user's explicit choice, used alone: a
root without the files skips the real-data tests rather than falling back elsewhere); else the
workflow's own data root ``<repo>/data`` (``data.root`` in config.yaml, where ``make run`` and
``make data`` download); else the offline copy beside the checkout, ``<repo>/../shared/data``.
Nothing downloads during tests.
"""

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "FA_MNIST_ROOT"
REPO = Path(__file__).resolve().parents[1]
MNIST_RAW_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Every skip for lack of MNIST starts with this; the end-of-run summary counts them by it.
SKIP_REASON = "real MNIST not found"
FIX = "`make data` (downloads it into data/) or `FA_MNIST_ROOT=/path/to/mnist make test`"


def candidate_roots(environ: Mapping[str, str] = os.environ, repo: Path = REPO) -> list[Path]:
    """The roots to look in, in order: ``FA_MNIST_ROOT`` alone, else ``<repo>/data``, ``<repo>/../shared/data``."""
    explicit = environ.get(ENV_VAR, "")
    if explicit:
        return [Path(explicit)]
    return [repo / "data", repo.parent / "shared" / "data"]


def has_mnist(root: Path) -> bool:
    """Whether ``root`` holds the four raw IDX files (their contents are the data module's to check)."""
    return all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_RAW_NAMES)


def find_mnist_root(environ: Mapping[str, str] = os.environ, repo: Path = REPO) -> Path | None:
    """The first candidate root that holds MNIST, or None when none does."""
    return next((root for root in candidate_roots(environ, repo) if has_mnist(root)), None)


def missing_reason(environ: Mapping[str, str] = os.environ, repo: Path = REPO) -> str:
    """The skip reason when no candidate holds MNIST: where the tests looked."""
    looked = ", ".join(f"{root}/MNIST/raw" for root in candidate_roots(environ, repo))
    via = f" (from {ENV_VAR})" if environ.get(ENV_VAR, "") else ""
    return f"{SKIP_REASON} under {looked}{via}"


def skip_summary(count: int) -> str:
    """The one line that ends a run in which real-data tests were skipped: how many, and the fix."""
    if count == 1:
        return f"1 test skipped: {SKIP_REASON}. Enable it with {FIX}."
    return f"{count} tests skipped: {SKIP_REASON}. Enable them with {FIX}."
