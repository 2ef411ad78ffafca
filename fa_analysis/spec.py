"""The run spec: the config slice of one training job (docs/design.md, "Run specs").

Its fields and their order are defined once, by :class:`RunSpec`; ``SPEC_KEYS`` lists them as
the plain dicts of ``config.run_specs`` carry them. One validation, :func:`check`, serves both
forms, and :func:`spec_dict` is how the config makes every dict. The dataclass holds no defaults
of its own: a field left out takes the value of the protocol's ``main/fa`` run, read from the
schema's defaults (the one source of defaults: tests keep config.yaml and ``config.run_specs`` of
the defaults equal to them). The schema is read here directly, not through ``config``, so that the
training jobs' code hash does not cover the config expansion. torch is imported only to ask
whether an asked-for CUDA device exists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from fa_analysis import learning_rules, settings
from fa_analysis.learning_rules import RULES
from fa_analysis.settings import is_int

ACTIVATION_NAMES = ("tanh_relu", "relu", "tanh", "sigmoid", "linear")  # network.ACTIVATIONS defines them
TARGETS = {"five_hot": 50, "one_hot": 10}  # output units each code kind needs
DTYPE_NAMES = ("float32", "float64")
#: Numbers read as floats in every spec (``gamma: 1`` and ``gamma: 1.0`` give the same spec).
FLOAT_KEYS = ("init_std", "eta", "gamma", "label_smoothing")
#: The protocol run whose values fill the fields a ``RunSpec`` is not given: experiment, condition, seed.
DEFAULT_RUN = ("main", "fa", 0)
#: The config section each field's default comes from; the other fields are set by the experiment.
DEFAULT_SECTIONS = {
    "network": ("sizes", "activation", "init_std", "bias", "targets"),
    "condition": ("rule", "eta", "wn", "gamma", "ibn", "label_smoothing"),
    "training": ("batch_size", "epochs", "reshuffle", "snapshot_every", "metrics", "compare_rules", "device", "dtype",
                 "threads"),
}


class _Default:
    """The value of a field left out: the protocol's (``protocol_defaults``)."""

    def __repr__(self) -> str:
        return "<protocol default>"


DEFAULT: Any = _Default()


@dataclass(frozen=True)
class RunSpec:
    """One training job's spec; validated on creation, fields left out take the protocol's values.

    The field order is the order of every spec dict (``SPEC_KEYS``). ``threads`` comes last and is
    no part of the dicts: the training rule adds it from its ``threads:``, so changing it reruns
    nothing. ``phases`` left out is one phase of ``epochs``. ``rule_settings`` left out are the
    schema's settings of the rule (``learning_rules.defaults``); keys given are completed by them.
    """

    experiment: str = DEFAULT
    condition: str = DEFAULT
    seed: int = DEFAULT
    sizes: tuple[int, ...] = DEFAULT
    activation: str = DEFAULT
    init_std: float = DEFAULT
    bias: bool = DEFAULT
    targets: str = DEFAULT
    rule: str = DEFAULT
    rule_settings: dict = DEFAULT
    eta: float = DEFAULT
    wn: bool = DEFAULT
    gamma: float | None = DEFAULT
    ibn: bool = DEFAULT
    label_smoothing: float = DEFAULT
    batch_size: int = DEFAULT
    epochs: int = DEFAULT
    reshuffle: bool = DEFAULT
    snapshot_every: int = DEFAULT
    metrics: bool = DEFAULT
    compare_rules: bool = DEFAULT
    label_noise: float = DEFAULT
    phases: tuple[int, ...] | None = None  # None: one phase of `epochs`
    device: str = DEFAULT
    dtype: str = DEFAULT
    observers: dict = DEFAULT
    threads: int = DEFAULT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        defaults = protocol_defaults()
        given_rule_settings = self.rule_settings
        for f in fields(self):
            if getattr(self, f.name) is DEFAULT:
                set_(self, f.name, _copy(defaults[f.name]))
        if self.rule in RULES and (given_rule_settings is DEFAULT or isinstance(given_rule_settings, Mapping)):
            given = {} if given_rule_settings is DEFAULT else given_rule_settings
            set_(self, "rule_settings", learning_rules.complete(self.rule, given))
        values = normalise(asdict(self))
        values["label_noise"] = float(values["label_noise"]) if is_int(values["label_noise"]) else values["label_noise"]
        for key in ("sizes", "phases"):
            if isinstance(values[key], list):
                values[key] = tuple(values[key])
        for key, value in values.items():
            set_(self, key, value)
        check(values)
        check_device_available(self.device)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> RunSpec:
        """Build from a plain dict (``config.run_specs``); unknown keys are an error naming them."""
        _check_known(spec, [f.name for f in fields(cls)])
        return cls(**dict(spec))

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins (lists for tuples), the inverse of ``from_dict``."""
        out = asdict(self)
        out["sizes"] = list(self.sizes)
        out["phases"] = list(self.phases)
        return out

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.condition}/seed{self.seed}"


#: The keys of a spec dict, in the order every spec lists them.
SPEC_KEYS = tuple(f.name for f in fields(RunSpec) if f.name != "threads")


@functools.cache
def protocol_defaults() -> dict[str, Any]:
    """The spec of the protocol's run ``DEFAULT_RUN`` from the schema's defaults, with ``threads``.

    Read from ``network``, ``training`` and the condition's entry of ``conditions`` (completed by
    the ``condition`` definition's own defaults, e.g. ``ibn``); what the experiment sets is that
    of a ``main`` run: true labels, one phase, no observers.
    """
    schema = settings.schema()
    properties = schema["properties"]
    experiment, condition, seed = DEFAULT_RUN

    def defaults_of(section: Mapping[str, Any]) -> dict[str, Any]:
        return {key: sub["default"] for key, sub in section["properties"].items() if "default" in sub}

    sections = {
        "network": defaults_of(properties["network"]),
        "training": defaults_of(properties["training"]),
        "condition": {"gamma": None, **defaults_of(schema["$defs"]["condition"]),
                      **properties["conditions"]["default"][condition]},
    }
    values = {key: sections[section][key] for section, keys in DEFAULT_SECTIONS.items() for key in keys}
    values.update(experiment=experiment, condition=condition, seed=seed, label_noise=0, phases=None, observers={},
                  rule_settings=learning_rules.complete(values["rule"]))
    return {key: values[key] for key in (*SPEC_KEYS, "threads")}


def spec_dict(**values: Any) -> dict[str, Any]:
    """One run's spec as a plain dict: every key of ``SPEC_KEYS`` given, in that order, checked.

    ``phases`` may be None (one phase of ``epochs``); the numbers of ``FLOAT_KEYS`` become floats.
    Raises ``ValueError`` naming the field.
    """
    _check_known(values, SPEC_KEYS)
    missing = [key for key in SPEC_KEYS if key not in values]
    if missing:
        raise ValueError(f"run spec lacks the key(s) {missing}")
    spec = normalise({key: values[key] for key in SPEC_KEYS})
    check(spec)
    return spec


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """``phases`` None -> ``[epochs]``, the numbers of ``FLOAT_KEYS`` as floats; in place, returned."""
    if values.get("phases") is None and is_int(values.get("epochs")):
        values["phases"] = [values["epochs"]]
    for key in FLOAT_KEYS:
        if is_int(values.get(key)):
            values[key] = float(values[key])
    return values


def check(spec: Mapping[str, Any]) -> None:
    """The rules every run spec obeys (method §1-§5); raises ``ValueError`` naming the field.

    Lists and tuples are both accepted for ``sizes`` and ``phases``; ``threads`` is checked when
    present. Whether a CUDA device exists is not asked here (``check_device_available``).
    """
    _choice("rule", spec["rule"], RULES)
    problem = learning_rules.settings_problem(spec["rule"], spec["rule_settings"])
    if problem:
        raise ValueError(problem)
    _choice("activation", spec["activation"], ACTIVATION_NAMES)
    _choice("targets", spec["targets"], tuple(TARGETS))
    _choice("dtype", spec["dtype"], DTYPE_NAMES)
    for key in ("experiment", "condition"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise ValueError(f"{key} must be a non-empty string, got {spec[key]!r}")
    for key in ("bias", "wn", "ibn", "reshuffle", "metrics", "compare_rules"):
        if not isinstance(spec[key], bool):
            raise ValueError(f"{key} must be true or false, got {spec[key]!r}")
    if not is_int(spec["seed"]) or spec["seed"] < 0:
        raise ValueError(f"seed must be a non-negative integer, got {spec['seed']!r}")
    sizes = spec["sizes"]
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2 or not all(is_int(n) and n >= 1 for n in sizes):
        raise ValueError(f"sizes must list at least two positive integers, got {sizes!r}")
    problem = output_units_problem(sizes, spec["targets"])
    if problem:
        raise ValueError(f"sizes {problem}")
    for key in ("init_std", "eta"):
        value = spec[key]
        if not isinstance(value, float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    if spec["init_std"] <= 0:
        raise ValueError(f"init_std must be positive, got {spec['init_std']!r}")
    problem = gamma_problem(spec["wn"], spec["gamma"])
    if problem:
        raise ValueError(problem)
    smoothing = spec["label_smoothing"]
    if not isinstance(smoothing, float) or not 0 <= smoothing < 1:
        raise ValueError(f"label_smoothing must be a number in [0, 1) (0 = off), got {smoothing!r}")
    bounds = (("batch_size", 1), ("epochs", 1), ("snapshot_every", 0)) + ((("threads", 1),) if "threads" in spec else ())
    for key, low in bounds:
        value = spec[key]
        if not is_int(value) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    noise = spec["label_noise"]
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise <= 100:
        raise ValueError(f"label_noise must be a percentage in [0, 100], got {noise!r}")
    phases = spec["phases"]
    if (
        not isinstance(phases, (list, tuple))
        or not phases
        or not all(is_int(p) and p >= 1 for p in phases)
        or sum(phases) != spec["epochs"]
    ):
        raise ValueError(
            f"phases must be a list of positive epoch counts summing to epochs={spec['epochs']}, got {phases!r}"
        )
    if not isinstance(spec["observers"], dict):
        raise ValueError(f"observers must be a mapping (e.g. {{}}), got {spec['observers']!r}")
    device = spec["device"]
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def gamma_problem(wn: bool, gamma: Any) -> str | None:
    """WN's column norm ``gamma`` is a positive number exactly where WN is on (method §3): what is
    wrong, or None."""
    if wn and (not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not gamma > 0):
        return f"gamma (the WN column norm) must be a positive number when wn is true, got {gamma!r}"
    if not wn and gamma is not None:
        return f"gamma is set ({gamma!r}) but wn is false: remove gamma or set wn: true"
    return None


def output_units_problem(sizes: Sequence[int], targets: str) -> str | None:
    """The last layer has the width the targets' code needs: what is wrong, or None."""
    if sizes[-1] != TARGETS[targets]:
        return (f"ends in {sizes[-1]} output units but targets {targets!r} needs {TARGETS[targets]}: "
                f"set the last entry of sizes to {TARGETS[targets]}")
    return None


def check_device_available(device: str) -> None:
    """An asked-for CUDA device exists on this machine (the one check that needs torch)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for but CUDA is not available on this machine: "
            "set training.device: cpu, or run the job on a node with a GPU"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")


def _check_known(values: Mapping[str, Any], accepted: Sequence[str]) -> None:
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise ValueError(f"unknown run spec key(s) {unknown}; accepted keys: {list(accepted)}")


def _copy(value: Any) -> Any:
    return {key: _copy(item) for key, item in value.items()} if isinstance(value, dict) else (
        list(value) if isinstance(value, list) else value)


def _choice(key: str, value: Any, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{key} must be one of {list(accepted)}, got {value!r}")
