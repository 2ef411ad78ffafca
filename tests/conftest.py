"""Shared fixtures: the real MNIST root and a small prepared MNIST subset."""

import os
from pathlib import Path

import pytest

MNIST_RAW_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real MNIST root in torchvision's layout: env FA_MNIST_ROOT, else <repo>/../shared/data.

    Skips the test when the raw files are not there (nothing downloads during tests).
    """
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = Path(os.environ.get("FA_MNIST_ROOT", default))
    if not all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_RAW_NAMES):
        pytest.skip(f"real MNIST not found under {root}/MNIST/raw (set FA_MNIST_ROOT)")
    return root


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (the machine's cores are shared), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_subset(mnist_root, tmp_path_factory):
    """Real MNIST at 15x15: the first 5,000 training and 1,000 test images, prepared once per session."""
    from fa_analysis import data

    out = tmp_path_factory.mktemp("mnist_subset") / "mnist15_5000_1000.npz"
    path = data.prepare_dataset(mnist_root, download=False, out_path=out, train_subset=5000, test_subset=1000)
    return data.load_prepared(path)


def pytest_collection_modifyitems(config, items):
    """Run the cluster tests last: they install and stand up SLURM, which nothing else needs."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
