"""The validated configuration and the run specs it expands into (docs/design.md, "Run specs").

``validate`` completes a config with the schema's defaults and checks it: first the JSON schema
(``fa_analysis/schemas/config.schema.yaml``, shipped with the package: types, ranges, enums, no
unknown keys), then the rules across fields that a schema cannot say well (``check_config``).
Every error names the key and the fix, and all of it happens before any job runs.

``run_specs`` expands a validated config into one plain dict per training job, keyed by
``(experiment, condition, seed)``. The workflow passes exactly that dict as the job's ``params``, so
editing a value reruns exactly the jobs whose dict changed. The dicts hold only builtins with a fixed
key order and floats as floats (``gamma: 1`` and ``gamma: 1.0`` give the same spec).
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from fa_analysis import learning_rules
from fa_analysis.spec import SPEC_KEYS, TARGETS, gamma_problem, spec_dict  # noqa: F401 (SPEC_KEYS: re-exported)

PACKAGE_DIR = Path(__file__).resolve().parent
#: The config schema, package data: its defaults are the protocol, equal to config.yaml's values.
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "config.schema.yaml"
#: The checkout's config.yaml (absent from an installed wheel; ``load_config()`` does not need it).
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config.yaml"

MNIST_TRAIN_SIZE = 60_000

#: Config sections of the mechanism experiments: each measures FA runs without WN (method §6).
MECHANISM_SECTIONS = ("alignment_terms", "shadow", "remainder")

class ConfigError(ValueError):
    """A config value is wrong; the message names the key (dotted path) and what to do."""


# --------------------------------------------------------------------------------------------
# Loading and validation


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-4`` as a float (YAML 1.2 does; PyYAML's YAML 1.1
    rules want a dot, ``1.0e-4``, and would give the string ``'1e-4'``)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict:
    """Read one YAML file as a dict, naming the file (and the line) when it is missing, malformed
    or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a YAML config")
    try:
        with path.open() as handle:
            data = yaml.load(handle, Loader=ConfigLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path}{where} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Read, complete and check a config file: the dict every other function here takes.

    The file is completed by the schema's defaults (which are config.yaml's values); unlike
    ``snakemake --configfile``, it is not merged key by key into config.yaml first. Without a
    path, the result is the defaults alone: the full protocol, read from the package's schema.
    Every error names the file.
    """
    if path is None:
        return validate({}, schema_path)
    config = load_yaml(path)
    try:
        return validate(config, schema_path)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def validate(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Complete ``config`` in place with the schema's defaults, then check it; returns it.

    Raises ``ConfigError`` naming every offending key (dotted path) before anything runs. In place,
    so that the Snakefile's global ``config`` is the completed one.
    """
    schema = load_yaml(schema_path)
    _coerce_strings(config, schema, schema)
    validator_class = _with_defaults(jsonschema.Draft202012Validator)
    errors = sorted(validator_class(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(_describe(error) for error in errors))
    check_config(config)
    return config


def _coerce_strings(instance: Any, schema: dict, root: dict) -> Any:
    """Read strings back as the booleans and numbers the schema asks for, in place.

    ``snakemake --config data='{root: /mnist, download: false}'`` parses nested values with YAML's
    BaseLoader, so every scalar inside arrives as a string (``'false'``, ``'3000'``). Where the
    schema wants a boolean, integer, number or null (and never a string), such a string is read as
    YAML; anything else is left for the schema to reject.
    """
    if "$ref" in schema:
        schema = {**root["$defs"][schema["$ref"].removeprefix("#/$defs/")], **schema}
    if isinstance(instance, dict):
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                instance[key] = _coerce_strings(value, sub, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        instance[:] = [_coerce_strings(value, schema["items"], root) for value in instance]
    elif isinstance(instance, str) and "type" in schema:
        types = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
        if "string" not in types:
            value = yaml.load(instance, Loader=ConfigLoader)
            wanted = {"boolean": bool, "integer": int, "number": (int, float), "null": type(None)}
            if any(isinstance(value, wanted[t]) for t in types if t in wanted):
                return value
    return instance


def _with_defaults(validator_class):
    """A validator that fills in each property's schema default before validating it.

    The pattern from the jsonschema FAQ (the same one ``snakemake.utils.validate`` uses), with the
    default deep-copied so that no two places share one mutable default.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"'{_dotted([*error.absolute_path, name])}'" for name in unknown)
        scope = f"under '{where}'" if where else "at the top level"
        return f"  unknown config key {keys}: the keys allowed {scope} are {', '.join(allowed)}"
    if error.validator in ("minItems", "minProperties") and not error.instance:
        key = str(error.absolute_path[-1]) if error.absolute_path else "config"
        wanted = error.validator_value
        item = key.removesuffix("s") if key.endswith("s") and "grid" not in error.absolute_path else "value"
        what = f"one {item}" if wanted == 1 else f"{wanted} values"
        verb = "list" if error.validator == "minItems" else "define"
        return f"  config key '{where}' is empty: {verb} at least {what}"
    if error.validator == "type" and isinstance(error.instance, str) and error.validator_value in ("number", "integer"):
        return f"  config key '{where}': {error.instance!r} is not a {error.validator_value}; write it unquoted, e.g. 3 or 1.0e-4"
    if error.validator == "propertyNames":
        return f"  config key '{where}': {error.message} (names are lower case letters, digits and _)"
    return f"  config key '{where or '(top level)'}': {error.message}"


def _dotted(path) -> str:
    return ".".join(str(part) for part in path)


def check_config(config: dict) -> None:
    """Cross-field rules of a schema-valid, default-completed config (raises ``ConfigError``).

    - WN's ``gamma`` is set exactly where ``wn`` is true (method §3);
    - every condition an experiment names is defined under ``conditions``; alignment terms and
      shadows are measured on FA runs without WN (method §6);
    - the trajectory conditions share one network shape and one label smoothing (method §8.3);
    - ``network.sizes`` starts with ``data.image_size``² inputs and ends with the targets' width
      (a condition's ``hidden`` widths go between those two);
    - the batch fits the training set, and the alignment-term iterations fit the run and its lags;
    - every point of every sweep is a valid run (``sweeps.check_sweeps``, method §12).
    """
    problems = []
    conditions = config["conditions"]
    for name, condition in conditions.items():
        problem = gamma_problem(condition["wn"], condition.get("gamma"))
        if problem:
            problems.append(f"config key 'conditions.{name}.gamma' (with 'conditions.{name}.wn' "
                            f"{str(condition['wn']).lower()}): {problem}")
        try:
            learning_rules.complete(condition["rule"], condition.get("rule_settings"))
        except ValueError as error:
            problems.append(f"config key 'conditions.{name}.rule_settings': {error}")

    known = ", ".join(sorted(conditions))
    for key, names in _condition_references(config):
        unknown = [f"'{name}'" for name in names if name not in conditions]
        if unknown:
            problems.append(
                f"config key '{key}' names unknown condition {', '.join(unknown)}; "
                f"define it under 'conditions' or use one of: {known}"
            )
    for section in MECHANISM_SECTIONS:
        name = config[section]["condition"]
        reason = learning_rules.mechanism_problem(conditions[name]["rule"], conditions[name]["wn"]) \
            if name in conditions else None
        if reason:
            problems.append(
                f"config key '{section}.condition' is '{name}', not an fa condition without WN: the "
                f"expansion of method §6 needs one fixed B_l and unnormalised weights, and {reason}"
            )
    problems += _check_trajectory(config)
    from fa_analysis.sweeps import check_sweeps  # sweeps builds on this module

    problems += check_sweeps(config)

    sizes = config["network"]["sizes"]
    n_in = config["data"]["image_size"] ** 2
    if sizes[0] != n_in:
        problems.append(
            f"config key 'network.sizes' starts with {sizes[0]} inputs but the images have "
            f"data.image_size² = {n_in} pixels; make the first size {n_in}"
        )
    targets = config["network"]["targets"]
    if sizes[-1] != TARGETS[targets]:
        problems.append(
            f"config key 'network.sizes' ends with {sizes[-1]} outputs but network.targets "
            f"'{targets}' needs {TARGETS[targets]}; make the last size {TARGETS[targets]}"
        )

    n_train = config["data"]["train_subset"] or MNIST_TRAIN_SIZE
    batch_size = config["training"]["batch_size"]
    if batch_size > n_train:
        problems.append(
            f"config key 'training.batch_size' ({batch_size}) exceeds the {n_train} training images; "
            "lower it or raise data.train_subset"
        )
    else:
        problems += _check_alignment_terms(config["alignment_terms"], iterations_per_epoch(config))
        problems += _check_remainder(config["remainder"], iterations_per_epoch(config))

    landscape = config["embedding"]["landscape_train_subset"]
    if landscape > n_train:
        problems.append(
            f"config key 'embedding.landscape_train_subset' ({landscape}) exceeds the {n_train} training "
            "images; lower it to at most data.train_subset"
        )
    umap = config["embedding"]["umap"]
    if umap["n_neighbors"] >= umap["max_points"]:
        problems.append(
            "config key 'embedding.umap.n_neighbors' must be smaller than embedding.umap.max_points"
        )
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))


def _check_trajectory(config: dict) -> list[str]:
    """The trajectory runs share one weight space and one loss (method §8.3): the joint PCA embeds
    every run's weights together, and the landscape beneath them is one surface."""
    conditions = config["conditions"]
    names = [name for name in config["experiments"]["trajectory"]["conditions"] if name in conditions]
    shapes = {name: condition_sizes(config["network"]["sizes"], conditions[name]) for name in names}
    smoothing = {name: conditions[name].get("label_smoothing", 0.0) for name in names}
    problems = []
    if len({tuple(sizes) for sizes in shapes.values()}) > 1:
        problems.append(
            f"config key 'experiments.trajectory.conditions' mixes network shapes {shapes}: the joint PCA "
            "embeds every trajectory in one weight space; give these conditions the same 'hidden' widths"
        )
    if len(set(smoothing.values())) > 1:
        problems.append(
            f"config key 'experiments.trajectory.conditions' mixes label_smoothing {smoothing}: the loss "
            "landscape beneath the trajectories is one surface; give these conditions the same label_smoothing"
        )
    return problems


def _condition_references(config: dict) -> Iterator[tuple[str, list[str]]]:
    for experiment, section in config["experiments"].items():
        yield f"experiments.{experiment}.conditions", section["conditions"]
    for section in MECHANISM_SECTIONS:
        yield f"{section}.condition", [config[section]["condition"]]
    for name, sweep in config["sweeps"].items():
        yield f"sweeps.{name}.conditions", sweep["conditions"]


def _check_alignment_terms(terms: dict, batches_per_epoch: int) -> list[str]:
    """T^o_l[k] needs k - o >= 0 for every lag o <= max_lag, and k inside the run (method §6)."""
    problems = []
    n_iterations = terms["epochs"] * batches_per_epoch
    for k in terms["iterations"]:
        if k >= n_iterations:
            problems.append(
                f"config key 'alignment_terms.iterations' has k = {k} but the runs have only "
                f"{n_iterations} iterations (alignment_terms.epochs x {batches_per_epoch} minibatches)"
            )
        if k < terms["max_lag"]:
            problems.append(
                f"config key 'alignment_terms.iterations' has k = {k} < alignment_terms.max_lag = "
                f"{terms['max_lag']}: T^o[k] needs k - o >= 0; lower max_lag or raise k"
            )
    return problems


def _check_remainder(remainder: dict, batches_per_epoch: int) -> list[str]:
    """The remainder's iterations lie inside its runs, and something is measured (method §6)."""
    n_iterations = remainder["epochs"] * batches_per_epoch
    problems = [
        f"config key 'remainder.iterations' has k = {k} but the runs have only {n_iterations} iterations "
        f"(remainder.epochs x {batches_per_epoch} minibatches)"
        for k in remainder["iterations"] if k >= n_iterations
    ]
    if not remainder["iterations"] and not remainder["every"]:
        problems.append("config keys 'remainder.iterations' and 'remainder.every' measure nothing: "
                        "list an iteration or set every > 0")
    return problems


# --------------------------------------------------------------------------------------------
# Run specs


def run_specs(config: dict) -> dict[tuple[str, str, int], dict]:
    """One plain dict per training job, keyed by ``(experiment, condition, seed)``.

    Expects a validated config. Experiments and their conditions (docs/design.md):
    ``main/{condition}``, ``label_noise/{condition}_p{level}``, ``label_change/{condition}``,
    ``trajectory/{condition}`` (one shared seed, so every method starts from the same W, B, b),
    ``terms/{condition}_{variant}``, ``shadow/{condition}``, and the points of every sweep,
    ``sweep/{sweep}/{base}/{field}~{value}/...`` (``sweeps.sweep_specs``, method §12).
    """
    specs = {}
    for spec in _iter_specs(config):
        key = (spec["experiment"], spec["condition"], spec["seed"])
        if key in specs:
            raise ConfigError(f"two runs are both named {key}; rename a condition in 'conditions'")
        specs[key] = spec
    return specs


def _iter_specs(config: dict) -> Iterator[dict]:
    experiments = config["experiments"]

    main = experiments["main"]
    for name in main["conditions"]:
        for seed in main["seeds"]:
            yield _spec(config, "main", name, name, seed)

    noise = experiments["label_noise"]
    for run_name, (name, level) in label_noise_runs(config).items():
        for seed in noise["seeds"]:
            yield _spec(config, "label_noise", run_name, name, seed, label_noise=level,
                        compare_rules=noise["compare_rules"])

    change = experiments["label_change"]
    for name in change["conditions"]:
        changes = {"phases": list(change["phases"]), "epochs": sum(change["phases"]),
                   "compare_rules": change["compare_rules"]}
        changes.update(_overrides(change["overrides"], config["conditions"][name]))
        for seed in change["seeds"]:
            yield _spec(config, "label_change", name, name, seed, **changes)

    rules = experiments["rules"]
    reused = rules_reused(config)
    for name in rules["conditions"]:
        for seed in rules["seeds"] if name not in reused else ():
            yield _spec(config, "rules", name, name, seed)

    trajectory = experiments["trajectory"]
    for name in trajectory["conditions"]:
        yield _spec(config, "trajectory", name, name, trajectory["seed"],
                    snapshot_every=trajectory["snapshot_every"],
                    **_overrides(trajectory["overrides"], config["conditions"][name]))

    terms = config["alignment_terms"]
    observer = {"alignment_terms": {
        "iterations": list(terms["iterations"]),
        "max_lag": terms["max_lag"],
        "lags_over_time": list(terms["lags_over_time"]),
        "every": terms["every"],
    }}
    variants = {
        "fixed": {"reshuffle": False},
        "reshuffle": {"reshuffle": True},
        "wrong_labels": {"reshuffle": False, "label_noise": 100},
    }
    name = terms["condition"]
    for variant in terms["variants"]:
        for seed in terms["seeds"]:
            yield _spec(config, "terms", f"{name}_{variant}", name, seed, epochs=terms["epochs"],
                        compare_rules=terms["compare_rules"], observers=observer, **variants[variant])

    shadow = config["shadow"]
    name = shadow["condition"]
    for seed in shadow["seeds"]:
        yield _spec(config, "shadow", name, name, seed, epochs=shadow["epochs"], compare_rules=shadow["compare_rules"],
                    observers={"shadow": {"random_b_seed_offset": shadow["random_b_seed_offset"]}})

    remainder = config["remainder"]
    name = remainder["condition"]
    observer = {"remainder": {"iterations": list(remainder["iterations"]), "every": remainder["every"]}}
    for seed in remainder["seeds"]:
        yield _spec(config, "remainder", name, name, seed, epochs=remainder["epochs"], reshuffle=False,
                    compare_rules=remainder["compare_rules"], observers=observer)

    from fa_analysis.sweeps import sweep_specs  # sweeps builds on this module

    yield from sweep_specs(config)


def rules_reused(config: dict) -> list[str]:
    """The conditions of experiment ``rules`` whose runs are main's (method §8.4): main has the
    condition with the same seeds, and a run's spec differs from main's in the experiment's name alone."""
    main, rules = config["experiments"]["main"], config["experiments"]["rules"]
    same_seeds = sorted(rules["seeds"]) == sorted(main["seeds"])
    return [name for name in rules["conditions"] if same_seeds and name in main["conditions"]]


def condition_sizes(sizes: list[int], condition: dict) -> list[int]:
    """A condition's layer widths: ``network.sizes`` with the condition's ``hidden`` widths, if it
    sets them, between the input and output widths (method §1.1)."""
    hidden = condition.get("hidden", sizes[1:-1])
    return [int(sizes[0]), *(int(n) for n in hidden), int(sizes[-1])]


def _overrides(overrides: dict, condition: dict) -> dict:
    """An experiment's ``overrides`` of a condition's keys; ``gamma`` applies only where ``wn`` is on."""
    changes = {key: overrides[key] for key in ("bias", "eta", "ibn") if key in overrides}
    if "gamma" in overrides and condition["wn"]:
        changes["gamma"] = overrides["gamma"]
    return changes


def _spec(config: dict, experiment: str, run_name: str, condition_name: str, seed: int, **changes) -> dict:
    """The spec of one run (``spec.spec_dict``): network + training + the condition, then the
    experiment's changes (``phases`` follows a changed ``epochs`` unless given)."""
    network, training = config["network"], config["training"]
    condition = config["conditions"][condition_name]
    values = {
        "experiment": experiment,
        "condition": run_name,
        "seed": int(seed),
        "sizes": condition_sizes(network["sizes"], condition),
        **{key: network[key] for key in ("activation", "init_std", "bias", "targets")},
        **{key: condition[key] for key in ("rule", "eta", "wn", "ibn", "label_smoothing")},
        "rule_settings": learning_rules.complete(condition["rule"], {
            **config["rule_settings"].get(condition["rule"], {}), **condition.get("rule_settings", {})}),
        "gamma": condition.get("gamma") if condition["wn"] else None,
        **{key: training[key] for key in ("batch_size", "epochs", "reshuffle", "snapshot_every", "metrics",
                                          "compare_rules", "device", "dtype")},
        "label_noise": 0,
        "phases": None,
        "observers": {},
    }
    unknown = set(changes) - set(values)
    if unknown:
        raise KeyError(f"not run-spec keys: {sorted(unknown)}")
    values.update(copy.deepcopy(changes))
    return spec_dict(**values)


# --------------------------------------------------------------------------------------------
# What the workflow derives from the specs


def label_noise_runs(config: dict) -> dict[str, tuple[str, int]]:
    """The label-noise experiment's run names, ``{condition}_p{level}``, with the condition and level each stands for."""
    noise = config["experiments"]["label_noise"]
    return {f"{name}_p{level}": (name, level) for name in noise["conditions"] for level in noise["levels"]}


def label_noise_levels(specs: Mapping[Any, dict]) -> list[int]:
    """The noisy-label sets the data stage must prepare: every level > 0 some run uses."""
    return sorted({spec["label_noise"] for spec in specs.values() if spec["label_noise"] > 0})


def experiment_conditions(specs: Mapping[tuple[str, str, int], dict]) -> dict[str, dict[str, list[int]]]:
    """``{experiment: {condition: [seeds]}}`` in config order: the units the aggregation works on."""
    layout: dict[str, dict[str, list[int]]] = {}
    for experiment, condition, seed in specs:
        layout.setdefault(experiment, {}).setdefault(condition, []).append(seed)
    return layout


def iterations_per_epoch(config: dict) -> int:
    """Minibatches per epoch of the configured training set (method §5: 60 for MNIST at batch 1000)."""
    n_train = config["data"]["train_subset"] or MNIST_TRAIN_SIZE
    return n_train // config["training"]["batch_size"]


# --------------------------------------------------------------------------------------------
# Code hashes for the workflow's params


def package_modules(*entry_modules: str) -> list[str]:
    """``entry_modules`` and every ``fa_analysis`` module they import, transitively.

    Read from the sources (nothing is imported), including imports inside functions. Names are
    module names without the package prefix, dotted inside a subpackage, e.g. ``["artifacts",
    "data", "network", "train"]`` or ``["figures", "figures.style", ...]``. A subpackage's name
    (``figures``, its ``__init__``) stands for every module in it, and a module of a subpackage
    brings its package along (Python runs the package's ``__init__`` first), so one edit anywhere
    in ``fa_analysis/figures/`` changes the hash of every job that draws a figure.
    """
    seen: set[str] = set()
    todo = [name.removeprefix("fa_analysis.") for name in entry_modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_source(name)
        if path is None:
            raise ValueError(f"no module fa_analysis.{name} (expected {PACKAGE_DIR / name.replace('.', '/')}.py "
                             "or a package there)")
        seen.add(name)
        if path.name == "__init__.py":
            todo += _package_members(name)
        if "." in name:
            todo.append(name.rpartition(".")[0])
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += [m for m in _imported_package_modules(ast.parse(path.read_text()), package) if m not in seen]
    return sorted(seen)


def _module_source(name: str) -> Path | None:
    """The source of package module ``name`` (``figures.style`` -> ``figures/style.py``; a package's
    ``__init__.py``), or None when there is none."""
    base = PACKAGE_DIR.joinpath(*name.split("."))
    for path in (base.with_name(f"{base.name}.py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package_members(package: str) -> list[str]:
    """Every module and subpackage directly in subpackage ``package`` (``figures`` -> ``figures.style``, ...)."""
    directory = PACKAGE_DIR.joinpath(*package.split("."))
    names = [path.stem for path in directory.glob("*.py") if path.name != "__init__.py"]
    names += [path.parent.name for path in directory.glob("*/__init__.py")]
    return [f"{package}.{name}" for name in sorted(names)]


def _imported_package_modules(tree: ast.Module, package: str = "") -> Iterator[str]:
    """The package modules a module's source imports, as names below ``fa_analysis``.

    ``package`` is the (sub)package the module lives in ("" for ``fa_analysis`` itself), against
    which relative imports resolve: in ``figures/training.py``, ``from . import style`` and
    ``from .style import PALETTE`` are ``figures.style``, ``from .. import aggregate`` is ``aggregate``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fa_analysis."):
                    yield alias.name.removeprefix("fa_analysis.")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module != "fa_analysis" and not (node.module or "").startswith("fa_analysis."):
                    continue
                parts = node.module.split(".")[1:]
            else:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue  # above fa_analysis: not the package's
                parts = parts[:len(parts) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            base = ".".join(parts)
            if base:
                yield base  # `from fa_analysis.figures import style` runs figures/__init__ first
            # `from fa_analysis import data`, `from . import style`: the names that are modules
            # (not e.g. __version__ or PALETTE)
            for alias in node.names:
                member = f"{base}.{alias.name}" if base else alias.name
                if _module_source(member) is not None:
                    yield member


def code_hash(*entry_modules: str) -> str:
    """The hash of the sources a job runs (``artifacts.source_hash`` of ``package_modules``).

    A rule passes it as a param, so editing a module reruns exactly the jobs that run it.
    """
    from fa_analysis.artifacts import source_hash

    return source_hash(package_modules(*entry_modules))
