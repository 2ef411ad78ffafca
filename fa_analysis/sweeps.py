"""Sweeps: grids of conditions from the config, expanded into ordinary run specs (method §12).

A sweep (config ``sweeps.{name}``) runs one or more base conditions (names of ``conditions``)
under a protocol (``main`` or ``label_change``, with that experiment's phases and overrides, then
the sweep's own ``overrides``) at every point of a grid of condition and network fields, each with
every seed of the sweep. Every run is a normal run spec of experiment ``sweep`` whose condition is
the point's identity::

    {sweep}/{base}/{field}~{value}/{field}~{value}...     e.g. fig_s3/fa/gamma~0.5/eta~3e-4/label_smoothing~0

so its directory is ``runs/sweep/{sweep}/{base}/gamma~0.5/eta~3e-4/.../seed{n}``: the workflow's
own ``runs/{experiment}/{condition}/seed{seed}``. The fields of an identity come in the fixed order
of ``GRID_FIELDS`` (not the config's), and a value's label depends on that value alone, so adding a
value to a grid adds runs without renaming any; removing one removes only its runs. Training,
hashing and reruns are those of any run: an edit reruns exactly the runs whose spec it changes.

Fields (``GRID_FIELDS``): ``gamma`` (a positive number, WN on at that column norm, or ``none``: no
WN), ``wn`` (on at the base condition's or the overrides' gamma, or off), ``eta``, ``ibn``,
``label_smoothing``, ``init_std``, ``bias``, ``activation``, ``hidden`` (the hidden widths), or
``width`` and ``depth`` (``depth`` hidden layers of ``width`` units; either alone keeps the other
from the base condition) and ``batch_size``. Nothing here imports torch; the schema has already
checked each value's type and range, ``check_sweeps`` checks what spans fields.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fa_analysis import config as fa_config

#: The experiment name of every sweep run (``runs/sweep/...``).
EXPERIMENT = "sweep"
#: The fields a grid may vary, in the order they appear in a run's identity.
GRID_FIELDS = ("gamma", "wn", "eta", "ibn", "label_smoothing", "init_std", "bias", "activation", "hidden",
               "width", "depth", "batch_size")
#: The protocols a sweep runs under: experiments whose runs are one condition and one seed each.
PROTOCOLS = ("main", "label_change")
#: Grid fields that are plain run-spec keys, set as given.
SPEC_FIELDS = ("eta", "ibn", "label_smoothing", "init_std", "bias", "activation", "batch_size")


@dataclass(frozen=True)
class Point:
    """One grid point of one base condition: its identity (the runs' condition) and coordinates."""

    sweep: str
    base: str
    coordinates: tuple[tuple[str, Any], ...]  # (field, value) in GRID_FIELDS order

    @property
    def labels(self) -> dict[str, str]:
        """``{field: label}``, the labels of the identity (``gamma: "none"``, ``eta: "3e-4"``)."""
        return {field: value_label(value) for field, value in self.coordinates}

    @property
    def condition(self) -> str:
        """The identity: ``{sweep}/{base}/{field}~{label}/...``."""
        return "/".join([self.sweep, self.base, *(f"{field}~{label}" for field, label in self.labels.items())])


def value_label(value: Any) -> str:
    """The label of a grid value in a run's identity: ``none`` for no WN, ``true``/``false``,
    widths joined by ``-`` (``100-100``), integers as written, other numbers in the shorter of their
    plain and scientific forms (``0.25``, ``3e-4``; ``1.0`` is ``1``), the plain one on a tie.

    Distinct numbers get distinct labels (both forms are exact), and a label depends on the value alone.
    """
    if value is None or value == "none":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "-".join(str(int(n)) for n in value)
    if isinstance(value, int):
        return str(value)
    number = Decimal(repr(float(value))).normalize()
    plain = format(number, "f")
    sign, digits, exponent = number.as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    scientific = f"{'-' if sign else ''}{mantissa}e{exponent + len(digits) - 1}"
    return scientific if len(scientific) < len(plain) else plain


def grid_values(sweep: Mapping[str, Any]) -> dict[str, list]:
    """``{field: values}`` of a sweep's grid in ``GRID_FIELDS`` order; ``none``/null gamma as None."""
    grid = sweep["grid"]
    values = {}
    for field in GRID_FIELDS:
        if field in grid:
            values[field] = [None if (field == "gamma" and v in (None, "none")) else v for v in grid[field]]
    return values


def sweep_points(config: Mapping[str, Any], name: str) -> list[Point]:
    """Every point of sweep ``name``: its base conditions in config order, each over the grid."""
    sweep = config["sweeps"][name]
    values = grid_values(sweep)
    return [Point(name, base, tuple(zip(values, combination)))
            for base in sweep["conditions"] for combination in itertools.product(*values.values())]


def sweep_specs(config: Mapping[str, Any]) -> Iterator[dict]:
    """The run specs of every sweep of a validated config (``config.run_specs`` takes them in)."""
    for name, sweep in config["sweeps"].items():
        for point in sweep_points(config, name):
            changes = point_changes(config, sweep, point)
            for seed in sweep["seeds"]:
                yield fa_config._spec(config, EXPERIMENT, point.condition, point.base, seed, **changes)


def point_changes(config: Mapping[str, Any], sweep: Mapping[str, Any], point: Point) -> dict:
    """The run-spec changes of one point, in the order they apply: the protocol (its phases and
    overrides), the sweep's ``phases``, ``compare_rules`` and ``overrides``, then the grid values.

    Raises ``ValueError`` (naming the key) where a point asks for WN without any gamma, or for a
    ``depth`` of a base condition whose hidden widths differ.
    """
    name, base = point.sweep, point.base
    condition = config["conditions"][base]
    changes: dict[str, Any] = {}
    if sweep["protocol"] == "label_change":
        protocol = config["experiments"]["label_change"]
        changes.update(phases=list(protocol["phases"]), epochs=sum(protocol["phases"]))
        changes.update(fa_config._overrides(protocol["overrides"], condition))
    if sweep.get("phases"):
        changes.update(phases=list(sweep["phases"]), epochs=sum(sweep["phases"]))
    changes["compare_rules"] = sweep["compare_rules"]
    overrides = sweep["overrides"]
    changes.update({key: overrides[key] for key in ("bias", "eta", "ibn") if key in overrides})
    wn = condition["wn"]
    gamma = changes.get("gamma", condition.get("gamma")) if wn else None
    if wn and "gamma" in overrides:
        gamma = overrides["gamma"]

    coordinates = dict(point.coordinates)
    for field in SPEC_FIELDS:
        if field in coordinates:
            changes[field] = coordinates[field]
    if "gamma" in coordinates:
        wn, gamma = coordinates["gamma"] is not None, coordinates["gamma"]
    if "wn" in coordinates:
        wn = coordinates["wn"]
        gamma = (gamma or overrides.get("gamma") or condition.get("gamma")) if wn else None
        if wn and gamma is None:
            raise ValueError(
                f"config key 'sweeps.{name}.grid.wn' turns WN on for condition '{base}', which has no gamma: "
                f"set sweeps.{name}.overrides.gamma, or sweep gamma instead (gamma: [none, 1.0, ...])")
    changes.update(wn=wn, gamma=gamma)

    sizes = fa_config.condition_sizes(config["network"]["sizes"], condition)
    hidden = sizes[1:-1]
    if "hidden" in coordinates:
        hidden = list(coordinates["hidden"])
    if "width" in coordinates or "depth" in coordinates:
        if "depth" in coordinates and "width" not in coordinates and len(set(hidden)) > 1:
            raise ValueError(
                f"config key 'sweeps.{name}.grid.depth': condition '{base}' has hidden widths {hidden} of "
                "different sizes, so a depth alone does not say the widths; sweep width too, or hidden")
        width = coordinates.get("width", hidden[0] if hidden else None)
        depth = coordinates.get("depth", len(hidden))
        if width is None:
            raise ValueError(f"config key 'sweeps.{name}.grid.depth': condition '{base}' has no hidden layer "
                             "to take the width from; sweep width too")
        hidden = [width] * depth
    changes["sizes"] = [sizes[0], *hidden, sizes[-1]]
    return copy.deepcopy(changes)


def check_sweeps(config: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about the sweeps of a schema-valid config: one message per problem.

    Base conditions are checked by ``config.check_config`` (known names); here: fields that
    exclude each other (``gamma`` with ``wn``, ``hidden`` with ``width``/``depth``), the
    figure's ``x`` among the grid's fields, batch sizes that fit the training set, and every point
    expanding to a valid run spec (WN with a gamma, a depth with a width).
    """
    problems = []
    n_train = config["data"]["train_subset"] or fa_config.MNIST_TRAIN_SIZE
    for name, sweep in config["sweeps"].items():
        key, grid = f"sweeps.{name}", sweep["grid"]
        if "gamma" in grid and "wn" in grid:
            problems.append(f"config key '{key}.grid' sweeps both gamma and wn: sweep gamma alone, "
                            "with none for no WN (gamma: [none, 0.5, 1.0])")
        if "hidden" in grid and ("width" in grid or "depth" in grid):
            problems.append(f"config key '{key}.grid' sweeps hidden together with width or depth: "
                            "sweep either the hidden widths or width and depth")
        labels = [value_label(None if v == "none" else v) for v in grid.get("gamma", [])]
        if len(labels) != len(set(labels)):
            problems.append(f"config key '{key}.grid.gamma' lists no WN twice (none and null): keep one")
        x = sweep["figure"]["x"]
        if x is not None and x not in grid:
            problems.append(f"config key '{key}.figure.x' is '{x}', not a field of the grid; "
                            f"use one of: {', '.join(f for f in GRID_FIELDS if f in grid)}")
        too_big = [b for b in grid.get("batch_size", []) if b > n_train]
        if too_big:
            problems.append(f"config key '{key}.grid.batch_size' has {too_big}, more than the {n_train} "
                            "training images; lower it or raise data.train_subset")
        if problems or any(base not in config["conditions"] for base in sweep["conditions"]):
            continue
        for point in sweep_points(config, name):
            try:
                fa_config._spec(config, EXPERIMENT, point.condition, point.base, 0,
                                **point_changes(config, sweep, point))
            except ValueError as error:
                message = str(error)
                problems.append(message if message.startswith("config key") else
                                f"config key '{key}' point {point.condition}: {message}")
                break
    return problems


def sweep_layout(config: Mapping[str, Any]) -> dict[str, dict]:
    """What the workflow and the sweep table need of each sweep, as plain values (a job's params):
    ``{name: {protocol, fields: {field: [labels in grid order]}, points: {condition: {base, rule,
    labels}}, seeds, last_epochs}}``."""
    layout = {}
    for name, sweep in config["sweeps"].items():
        layout[name] = {
            "protocol": sweep["protocol"],
            "fields": {field: [value_label(v) for v in values] for field, values in sweep["grid"].items()},
            "points": {point.condition: {"base": point.base, "rule": config["conditions"][point.base]["rule"],
                                         "labels": point.labels}
                       for point in sweep_points(config, name)},
            "seeds": list(sweep["seeds"]),
            "last_epochs": sweep["last_epochs"],
        }
    return layout
