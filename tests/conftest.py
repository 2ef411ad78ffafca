"""Shared fixtures: the real MNIST root and a small prepared MNIST subset; the run's MNIST summary."""

from pathlib import Path

import mnist_location
import pytest


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real MNIST root in torchvision's layout: FA_MNIST_ROOT, else <repo>/data, else <repo>/../shared/data.

    Skips the test when none holds the raw files (the order is ``mnist_location``'s; nothing
    downloads during tests).
    """
    root = mnist_location.find_mnist_root()
    if root is None:
        pytest.skip(mnist_location.missing_reason())
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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """End a run that skipped real-data tests with one line: how many, and how to enable them.

    Outermost wrapper (``tryfirst``), so the line comes after pytest's own summary, the ``-ra``
    list of skips included, just above the closing counts.
    """
    result = yield
    skipped = [
        report for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and mnist_location.SKIP_REASON in report.longrepr[2]
    ]
    if skipped:
        terminalreporter.write_line(mnist_location.skip_summary(len(skipped)), yellow=True, bold=True)
    return result
