"""The package outside the checkout: the config schema travels as package data, and a wheel works.

The wheel test builds the package, installs it into a fresh virtual environment and uses it from a
directory outside the checkout, so it sees only what the wheel carries.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fa_analysis import config as fa_config

REPO = Path(__file__).resolve().parents[1]


def test_schema_is_package_data():
    """The schema lives inside the package (so a wheel carries it) and the pyproject declares it."""
    package = Path(fa_config.__file__).resolve().parent
    assert fa_config.SCHEMA_PATH.is_file()
    assert fa_config.SCHEMA_PATH.resolve().is_relative_to(package)
    assert '"schemas/*.yaml"' in (REPO / "pyproject.toml").read_text()
    assert not (REPO / "workflow" / "schemas" / "config.schema.yaml").exists(), "one copy of the schema only"


def test_load_config_without_a_path_is_the_protocol():
    """``load_config()`` reads nothing outside the package and gives config.yaml's protocol."""
    assert fa_config.load_config() == fa_config.load_config(REPO / "config.yaml")


def _third_party_imports() -> set[str]:
    """Top-level names of every module the package's sources import, outside the standard library."""
    import ast
    import sys

    names = set()
    for path in (REPO / "fa_analysis").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "fa_analysis"}


def _declared_dependencies() -> set[str]:
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-") for req in project["dependencies"]}


def test_declared_dependencies_are_the_imported_ones():
    """Every imported distribution is declared, and every declared one is imported (or named here)."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    imported = {distributions[name][0].lower().replace("_", "-") for name in _third_party_imports()}
    used_without_import = {"pyarrow", "snakemake"}  # pandas' Parquet engine; the workflow's runner
    declared = _declared_dependencies()
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - imported - used_without_import == set(), "declared in pyproject.toml but never imported"


# ---------------------------------------------------------------------------------------------
# The wheel in a fresh virtual environment

OUTSIDE_SCRIPT = r"""
import json, sys
from pathlib import Path

import torch
import fa_analysis
from fa_analysis import data
from fa_analysis.config import SCHEMA_PATH, load_config, run_specs

checkout = Path(sys.argv[1])
package = Path(fa_analysis.__file__).resolve().parent
assert not package.is_relative_to(checkout), f"imported the checkout's package: {package}"
assert SCHEMA_PATH.is_file() and SCHEMA_PATH.is_relative_to(package), SCHEMA_PATH
config = load_config()
assert config == json.loads(Path(sys.argv[2]).read_text()), "load_config() differs from config.yaml"

generator = torch.Generator().manual_seed(0)
dataset = data.PreparedData(
    X_train=torch.rand(300, 225, generator=generator), y_train=torch.randint(0, 10, (300,), generator=generator),
    X_test=torch.rand(50, 225, generator=generator), y_test=torch.randint(0, 10, (50,), generator=generator),
    metadata={},
)
run = fa_analysis.train_one(condition="fa_wn", seed=1, epochs=2, dataset=dataset, batch_size=100, log=None)
assert run.status == "completed" and len(run.metrics) == 6, run
print(json.dumps({"package": str(package), "runs": len(run_specs(config)), "version": fa_analysis.__version__}))
"""


def _run(command: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.mark.slow
def test_wheel_installs_and_works_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a fresh venv, use it from a directory outside the checkout.

    The fresh venv holds only the wheel (``--no-deps``); its dependencies are the ones this test
    runs with (pinned by constraints.txt), made visible through a path file rather than installed
    again (torch alone is gigabytes), and ``pip check`` confirms that they satisfy every
    requirement the wheel declares. The checkout's own (editable) package is not on that path.
    """
    source = tmp_path / "source"  # only what the wheel is built from: no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "fa_analysis", source / "fa_analysis", ignore=shutil.ignore_patterns("__pycache__"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp_path / "dist", source], 300)
    wheel = next((tmp_path / "dist").glob("fa_analysis-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], 120)
    python = venv / "bin" / "python"
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60).stdout.strip())
    dependencies = Path(sysconfig.get_paths()["purelib"])  # this environment's packages, after the venv's own
    (site_packages / "dependencies.pth").write_text(f"{dependencies}\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-compile", "--quiet", wheel], 300)
    checked = _run([sys.executable, "-m", "pip", "--python", python, "check"], 120)
    assert "No broken requirements" in checked.stdout

    outside = tmp_path / "outside"
    outside.mkdir()
    expected = outside / "config.json"
    expected.write_text(json.dumps(fa_config.load_config(REPO / "config.yaml")))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    script = outside / "use_the_wheel.py"
    script.write_text(OUTSIDE_SCRIPT)
    result = _run([python, script, REPO, expected], 300, cwd=outside, env=env)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(venv)) and found["runs"] == len(fa_config.run_specs(fa_config.load_config()))
    version = _run([venv / "bin" / "fa-analysis", "--version"], 120, cwd=outside, env=env)
    assert version.stdout.strip() == f"fa-analysis {found['version']}"
