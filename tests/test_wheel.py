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
