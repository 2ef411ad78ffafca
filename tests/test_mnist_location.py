"""Where the tests find MNIST (``mnist_location``), and what a run without it ends with.

The order is checked on layouts made here; two runs of pytest in a subprocess, on a copy of the
suite's conftest in a fake checkout, show a real-data test running from ``<repo>/data`` with
``FA_MNIST_ROOT`` unset, and a run with no MNIST anywhere ending on the skipped count and the fix.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mnist_location

TESTS = Path(__file__).resolve().parent
# torchvision's names for MNIST's four raw IDX files
RAW_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def _put_raw_files(root: Path, names=RAW_NAMES) -> Path:
    """Files named as MNIST's raw IDX files under ``root/MNIST/raw`` (the location looks at names only)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in names:
        (raw / name).write_bytes(b"")
    return root


@pytest.fixture
def checkout(tmp_path) -> Path:
    """An empty checkout at ``tmp/checkout``; the copy beside it would be ``tmp/shared/data``."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    return repo


def test_workflow_data_root_comes_before_the_copy_beside_the_checkout(checkout):
    sibling = _put_raw_files(checkout.parent / "shared" / "data")
    assert mnist_location.find_mnist_root({}, checkout) == sibling
    own = _put_raw_files(checkout / "data")
    assert mnist_location.find_mnist_root({}, checkout) == own
    assert mnist_location.find_mnist_root({"FA_MNIST_ROOT": ""}, checkout) == own, "empty means unset"


def test_env_root_is_used_alone(checkout, tmp_path):
    _put_raw_files(checkout / "data")
    _put_raw_files(checkout.parent / "shared" / "data")
    chosen = _put_raw_files(tmp_path / "elsewhere")
    assert mnist_location.find_mnist_root({"FA_MNIST_ROOT": str(chosen)}, checkout) == chosen
    missing = tmp_path / "missing"
    assert mnist_location.find_mnist_root({"FA_MNIST_ROOT": str(missing)}, checkout) is None
    reason = mnist_location.missing_reason({"FA_MNIST_ROOT": str(missing)}, checkout)
    assert str(missing / "MNIST" / "raw") in reason and "shared" not in reason


def test_a_root_missing_one_file_is_passed_over(checkout):
    _put_raw_files(checkout / "data", RAW_NAMES[:3])
    assert mnist_location.find_mnist_root({}, checkout) is None
    reason = mnist_location.missing_reason({}, checkout)
    assert str(checkout / "data" / "MNIST" / "raw") in reason
    assert str(checkout.parent / "shared" / "data" / "MNIST" / "raw") in reason


def _fake_suite(repo: Path, test_source: str) -> None:
    """The suite's conftest, its MNIST location and pytest settings in ``repo``, with one test file."""
    (repo / "tests").mkdir()
    for name in ("conftest.py", "mnist_location.py"):
        shutil.copy(TESTS / name, repo / "tests" / name)
    shutil.copy(TESTS.parent / "pyproject.toml", repo / "pyproject.toml")  # testpaths, addopts = -ra
    (repo / "tests" / "test_tiny.py").write_text(test_source)


def _run_pytest(repo: Path) -> list[str]:
    """Run pytest in ``repo`` with FA_MNIST_ROOT unset; its output lines (it must exit 0)."""
    unset = ("FA_MNIST_ROOT", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()


TINY_REAL_DATA_TEST = '''
import struct
from pathlib import Path


def test_reads_the_test_images(mnist_root):
    header = (mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()[:16]
    assert struct.unpack(">4i", header) == (2051, 10000, 28, 28)
    (Path(__file__).parent / "root_seen.txt").write_text(str(mnist_root))
'''


def test_files_under_data_run_the_real_data_tests_without_the_env_var(tmp_path, mnist_root):
    """Where ``make run`` downloads MNIST (``data/MNIST/raw``), the real-data tests find it unaided."""
    repo = tmp_path / "checkout"
    raw = repo / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_NAMES:
        (raw / name).symlink_to(mnist_root / "MNIST" / "raw" / name)
    _fake_suite(repo, TINY_REAL_DATA_TEST)
    lines = _run_pytest(repo)
    assert re.fullmatch(r"=+ 1 passed in [\d.]+s =+", lines[-1]), lines[-5:]
    assert (repo / "tests" / "root_seen.txt").read_text() == str(repo / "data")


TINY_MIXED_TESTS = '''
def test_needs_mnist(mnist_root):
    pass


def test_needs_mnist_too(mnist_root):
    pass


def test_needs_nothing():
    pass
'''


def test_a_run_without_mnist_anywhere_ends_on_the_skipped_count_and_the_fix(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    _fake_suite(repo, TINY_MIXED_TESTS)
    lines = _run_pytest(repo)
    assert re.fullmatch(r"=+ 1 passed, 2 skipped in [\d.]+s =+", lines[-1]), lines[-5:]
    summary = lines[-2]
    assert summary.startswith("2 tests skipped: real MNIST not found"), lines[-5:]
    assert "`make data`" in summary and "`FA_MNIST_ROOT=/path/to/mnist make test`" in summary
    skipped = [i for i, line in enumerate(lines) if line.startswith("SKIPPED")]
    assert len(skipped) == 2 and max(skipped) < len(lines) - 2, "the line follows the -ra list"
