"""The package outside the checkout: the config schema travels as package data, and a wheel works.

The wheel test builds the package, installs it into a fresh virtual environment and uses it from a
directory outside the checkout, so it sees only what the wheel carries.
"""

from __future__ import annotations

from pathlib import Path

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
