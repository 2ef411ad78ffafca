"""The one source of the analyses' defaults, and the checks their settings share.

Every default a config key has lives in the schema (``schemas/config.schema.yaml``): the settings
classes of the analyses (``alignment_terms``, ``remainder``, ``open_loop``, ``embedding``) declare
their fields without defaults of their own and fill a key their config slice leaves out with
:func:`schema_defaults` of that slice. Tests keep ``config.yaml`` equal to the schema's defaults,
so the three cannot drift apart. No torch import: the run spec (``spec.py``) uses this too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema, read once."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_defaults(*section: str) -> dict[str, Any]:
    """The defaults the schema gives the keys of a config section, e.g. ``schema_defaults("embedding", "umap")``.

    A key without a default in the schema is absent from the result (the section must give it).
    Returns fresh copies: callers may change them.
    """
    node = schema()
    for i, key in enumerate(section):
        properties = node.get("properties", {})
        if key not in properties:
            raise KeyError(f"the config schema has no section {'.'.join(section[: i + 1])!r}")
        node = properties[key]
    return {key: _copy(sub["default"]) for key, sub in node.get("properties", {}).items() if "default" in sub}


def with_defaults(section: tuple[str, ...], given: Mapping[str, Any], accepted: set[str]) -> dict[str, Any]:
    """``given`` completed by the schema's defaults of ``section``, after refusing keys outside ``accepted``."""
    unknown = set(given) - accepted
    if unknown:
        raise KeyError(f"{'.'.join(section)} has unknown keys {sorted(unknown)}; accepted: {sorted(accepted)}")
    defaults = {key: value for key, value in schema_defaults(*section).items() if key in accepted}
    return {**defaults, **given}


def is_int(value: Any) -> bool:
    """An integer that is not a bool (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return list(value) if isinstance(value, list) else value
