"""The config layer: schema defaults, errors that name the key, and the run specs (docs/design.md)."""

import copy
import json

import pytest
import yaml

from fa_analysis import config as fa_config
from fa_analysis.config import ConfigError, load_config, run_specs, validate

SMOKE_CONFIG = fa_config.REPO_ROOT / "tests" / "smoke" / "config.yaml"


@pytest.fixture(scope="module")
def default_config():
    return load_config(fa_config.DEFAULT_CONFIG_PATH)


@pytest.fixture(scope="module")
def default_specs(default_config):
    return run_specs(default_config)


def raises_naming(config, *needles):
    with pytest.raises(ConfigError) as caught:
        validate(config)
    for needle in needles:
        assert needle in str(caught.value)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# Schema and default config


def test_schema_defaults_are_the_default_config(default_config):
    """An empty config completed by the schema is config.yaml: the two cannot drift apart."""
    assert validate({}) == default_config


def test_every_default_config_key_is_in_the_schema():
    """config.yaml passes the schema as written, without a default filling anything it lacks."""
    raw = fa_config.load_yaml(fa_config.DEFAULT_CONFIG_PATH)
    completed = validate(copy.deepcopy(raw))

    def leaves(tree, prefix=()):
        for key, value in tree.items():
            if isinstance(value, dict) and value and key != "conditions":
                yield from leaves(value, prefix + (key,))
            else:
                yield prefix + (key,)

    assert set(leaves(raw)) == set(leaves(completed))


def test_default_config_is_the_spec_protocol(default_config):
    """method §5, §7, §8: the defaults are the study's protocol."""
    c = default_config
    assert c["network"]["sizes"] == [225, 50, 50, 50, 50, 50]
    assert c["network"]["activation"] == "tanh_relu" and c["network"]["init_std"] == 0.1
    assert (c["training"]["batch_size"], c["training"]["epochs"]) == (1000, 100)
    etas = {name: cond["eta"] for name, cond in c["conditions"].items()}
    assert etas == {"bp": 4e-4, "bp_wn": 3e-4, "fa": 5e-4, "fa_wn": 5e-4, "fa_wn_noibn": 5e-4, "dfa": 5e-4}
    assert c["conditions"]["dfa"]["rule"] == "dfa"  # the protocol's extension beyond the study
    assert c["conditions"]["fa_wn"]["gamma"] == 1.0 and c["conditions"]["fa_wn"]["ibn"]
    assert c["conditions"]["bp_wn"]["gamma"] == 0.6 and not c["conditions"]["fa_wn_noibn"]["ibn"]
    assert len(c["experiments"]["main"]["seeds"]) == 10
    assert len(c["alignment_terms"]["seeds"]) == 30 and c["alignment_terms"]["epochs"] == 25
    assert c["experiments"]["trajectory"]["snapshot_every"] == 3
    open_loop = c["open_loop"]
    assert (open_loop["sizes"], open_loop["eta"], open_loop["iterations"]) == ([20, 100, 20], 0.002, 2000)


def test_smoke_config_is_valid_and_small():
    smoke = load_config(SMOKE_CONFIG)
    specs = run_specs(smoke)
    iterations = sum(
        spec["epochs"] * (smoke["data"]["train_subset"] // spec["batch_size"]) for spec in specs.values()
    )
    # 45: with one seed of each rule of method §1.6; 8 more: the 2 x 2 sweep's two seeds of 2 epochs
    assert len(specs) <= 53 and iterations <= 5_000
    assert all(len(seeds) >= 2 for seeds in fa_config.experiment_conditions(specs)["main"].values())


# ---------------------------------------------------------------------------------------------
# Errors name the key


def test_typo_in_a_nested_key_names_it():
    raises_naming({"conditions": {"fa": {"rule": "fa", "etaa": 5e-4}}}, "'conditions.fa.etaa'")


def test_typo_in_a_top_level_key_names_it():
    raises_naming({"trainig": {"epochs": 3}}, "'trainig'", "at the top level")


def test_unknown_condition_in_an_experiment_names_the_key():
    message = raises_naming({"experiments": {"main": {"conditions": ["fa", "fa_wnn"]}}},
                            "'experiments.main.conditions'", "'fa_wnn'")
    assert "'fa'" not in message.split("unknown condition")[1].split(";")[0]


def test_negative_eta_names_the_key():
    raises_naming({"conditions": {"fa": {"rule": "fa", "eta": -5e-4}}}, "'conditions.fa.eta'")


def test_gamma_without_wn_names_the_key(default_config):
    config = fa_config.load_yaml(fa_config.DEFAULT_CONFIG_PATH)
    config["conditions"]["bp"]["gamma"] = 0.6
    raises_naming(config, "'conditions.bp.gamma'", "wn")


def test_wn_without_gamma_names_the_key():
    config = fa_config.load_yaml(fa_config.DEFAULT_CONFIG_PATH)
    del config["conditions"]["fa_wn"]["gamma"]
    raises_naming(config, "'conditions.fa_wn.gamma'")


def test_bad_enum_names_the_key():
    raises_naming({"network": {"activation": "tanh_rel"}}, "'network.activation'", "tanh_relu")


def test_sizes_must_match_images_and_targets():
    raises_naming({"network": {"sizes": [784, 50, 10]}}, "'network.sizes'", "225", "10 outputs")


def test_alignment_term_iterations_must_fit_the_run():
    raises_naming({"alignment_terms": {"iterations": [66, 9000]}}, "'alignment_terms.iterations'", "9000")
    raises_naming({"alignment_terms": {"iterations": [30]}}, "'alignment_terms.iterations'", "max_lag")


def test_remainder_iterations_must_fit_the_run_and_measure_something():
    raises_naming({"remainder": {"iterations": [66, 1800]}}, "'remainder.iterations'", "1800", "1800 iterations")
    raises_naming({"remainder": {"iterations": [], "every": 0}}, "'remainder.iterations'", "every > 0")


def test_alignment_terms_and_shadows_need_fa_without_wn():
    raises_naming({"alignment_terms": {"condition": "bp"}}, "'alignment_terms.condition'")
    raises_naming({"shadow": {"condition": "fa_wn"}}, "'shadow.condition'", "WN")
    raises_naming({"remainder": {"condition": "fa_wn"}}, "'remainder.condition'", "WN")


def test_command_line_strings_are_read_as_the_schema_types():
    """snakemake --config data='{root: ..., download: false}' delivers nested scalars as strings."""
    config = fa_config.load_yaml(fa_config.DEFAULT_CONFIG_PATH)
    config["data"].update(root="/mnist", download="false", test_subset="500")
    config["experiments"]["main"]["seeds"] = ["0", "1"]
    config["conditions"]["fa"] = {"rule": "fa", "eta": "5.0e-4", "wn": "false"}
    validate(config)
    assert (config["data"]["root"], config["data"]["download"], config["data"]["test_subset"]) == ("/mnist", False, 500)
    assert config["experiments"]["main"]["seeds"] == [0, 1]
    assert config["conditions"]["fa"]["eta"] == 5e-4 and config["conditions"]["fa"]["wn"] is False
    raises_naming({"data": {"download": "maybe"}}, "'data.download'")


# Every list of the config that says what to run: empty, it would plan nothing (or a DAG without
# an experiment the later stages expect). Adding a section with such a list adds its key here.
LISTS_THAT_PLAN = (
    "experiments.main.conditions", "experiments.main.seeds",
    "experiments.label_noise.conditions", "experiments.label_noise.levels", "experiments.label_noise.seeds",
    "experiments.label_change.conditions", "experiments.label_change.phases", "experiments.label_change.seeds",
    "experiments.trajectory.conditions",
    "alignment_terms.seeds", "alignment_terms.variants", "alignment_terms.iterations",
    "alignment_terms.lags_over_time",
    "shadow.seeds", "remainder.seeds",
    "open_loop.scenarios", "open_loop.beta_sweep.betas", "open_loop.beta_sweep.wn",
    "figures.formats",
)


@pytest.mark.parametrize("key", LISTS_THAT_PLAN)
def test_an_empty_list_is_an_error_naming_the_key(key):
    config = fa_config.load_yaml(fa_config.DEFAULT_CONFIG_PATH)
    *parents, name = key.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    section[name] = []
    message = raises_naming(config, f"config key '{key}' is empty: list at least one")
    assert len(message.splitlines()) == 2  # the header and this one key


def test_empty_seeds_name_the_seed():
    raises_naming({"experiments": {"main": {"seeds": []}}},
                  "config key 'experiments.main.seeds' is empty: list at least one seed")


def test_no_conditions_is_an_error_naming_the_key():
    raises_naming({"conditions": {}}, "config key 'conditions' is empty: define at least one condition")


def test_numbers_without_a_dot_are_numbers(tmp_path):
    """``eta: 1e-4`` is a float in YAML 1.2, a string to PyYAML (YAML 1.1)."""
    path = tmp_path / "eta.yaml"
    path.write_text("conditions:\n  fa: {rule: fa, eta: 1e-4}\n  bp: {rule: bp, eta: 2E-4}\n"
                    "experiments:\n  main: {conditions: [fa, bp]}\n  label_change: {conditions: [fa]}\n"
                    "  trajectory: {conditions: [fa, bp]}\n")
    config = load_config(path)
    assert config["conditions"]["fa"]["eta"] == 1e-4 and config["conditions"]["bp"]["eta"] == 2e-4
    # Snakemake reads its --configfile with PyYAML itself: validation reads such strings as numbers
    snakemake_read = yaml.safe_load(path.read_text())
    assert snakemake_read["conditions"]["fa"]["eta"] == "1e-4"
    assert validate(snakemake_read)["conditions"]["fa"]["eta"] == 1e-4


def test_a_string_where_a_number_belongs_says_how_to_write_it():
    raises_naming({"conditions": {"fa": {"rule": "fa", "eta": "1e-4x"}}}, "'conditions.fa.eta'", "1.0e-4")


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: 3\n  batch_size: [100\n")
    with pytest.raises(ConfigError, match=rf"config file {path}, line 4, column 1 is not valid YAML"):
        load_config(path)


def test_validation_fills_defaults_in_place():
    config = {"training": {"epochs": 3}}
    assert validate(config) is config
    assert config["training"]["batch_size"] == 1000 and config["training"]["epochs"] == 3


# ---------------------------------------------------------------------------------------------
# Run specs


def test_one_spec_per_experiment_condition_seed(default_config, default_specs):
    e = default_config["experiments"]
    expected = (
        len(e["main"]["conditions"]) * len(e["main"]["seeds"])
        + len(e["label_noise"]["conditions"]) * len(e["label_noise"]["levels"]) * len(e["label_noise"]["seeds"])
        + len(e["label_change"]["conditions"]) * len(e["label_change"]["seeds"])
        + len(e["trajectory"]["conditions"])
        + len(default_config["alignment_terms"]["variants"]) * len(default_config["alignment_terms"]["seeds"])
        + len(default_config["shadow"]["seeds"])
        + len(default_config["remainder"]["seeds"])
    )
    assert len(default_specs) == expected == 267
    for (experiment, condition, seed), spec in default_specs.items():
        assert (spec["experiment"], spec["condition"], spec["seed"]) == (experiment, condition, seed)


def test_specs_are_plain_builtins_in_a_fixed_key_order(default_specs):
    for spec in default_specs.values():
        assert tuple(spec) == fa_config.SPEC_KEYS
        assert json.loads(json.dumps(spec)) == spec
        assert "threads" not in spec


def test_gamma_written_as_int_gives_the_same_spec():
    as_float = run_specs(validate({}))
    as_int = run_specs(validate({"conditions": {**validate({})["conditions"],
                                                "fa_wn": {"rule": "fa", "eta": 5e-4, "wn": True, "gamma": 1, "ibn": True}}}))
    assert repr(as_float) == repr(as_int)


def test_label_change_applies_its_overrides(default_specs):
    fa_wn = default_specs[("label_change", "fa_wn", 0)]
    bp = default_specs[("label_change", "bp", 0)]
    assert (fa_wn["eta"], fa_wn["gamma"], fa_wn["ibn"], fa_wn["bias"]) == (3e-4, 0.6, False, False)
    assert fa_wn["phases"] == [100, 100] and fa_wn["epochs"] == 200
    assert bp["gamma"] is None and not bp["wn"] and bp["eta"] == 3e-4
    assert default_specs[("main", "fa_wn", 0)]["ibn"] and default_specs[("main", "fa_wn", 0)]["bias"]


def test_trajectory_runs_share_one_seed_and_take_snapshots(default_config, default_specs):
    runs = [spec for key, spec in default_specs.items() if key[0] == "trajectory"]
    assert {spec["seed"] for spec in runs} == {default_config["experiments"]["trajectory"]["seed"]}
    assert {spec["condition"] for spec in runs} == {"bp", "fa", "bp_wn", "fa_wn"}
    assert all(spec["snapshot_every"] == 3 for spec in runs)
    # the study's settings for the embedding: one eta for every method, BP+WN at gamma = 1
    assert {spec["eta"] for spec in runs} == {5e-4}
    by_condition = {spec["condition"]: spec for spec in runs}
    assert by_condition["bp_wn"]["gamma"] == 1.0 and by_condition["fa_wn"]["gamma"] == 1.0
    assert by_condition["bp"]["gamma"] is None and by_condition["fa_wn"]["ibn"]
    assert default_specs[("main", "bp_wn", 0)]["gamma"] == 0.6 and default_specs[("main", "bp", 0)]["eta"] == 4e-4
    assert all(spec["snapshot_every"] == 0 for key, spec in default_specs.items() if key[0] == "main")


def test_terms_variants_and_shadow_carry_their_observers(default_specs):
    fixed = default_specs[("terms", "fa_fixed", 29)]
    reshuffle = default_specs[("terms", "fa_reshuffle", 0)]
    wrong = default_specs[("terms", "fa_wrong_labels", 0)]
    assert (fixed["reshuffle"], reshuffle["reshuffle"], wrong["reshuffle"]) == (False, True, False)
    assert (fixed["label_noise"], wrong["label_noise"]) == (0, 100)
    assert fixed["epochs"] == 25 and fixed["phases"] == [25]
    assert fixed["observers"]["alignment_terms"]["iterations"] == [66, 1260]
    assert fixed["observers"]["alignment_terms"]["max_lag"] == 64
    shadow = default_specs[("shadow", "fa", 2)]
    assert shadow["epochs"] == 10 and set(shadow["observers"]) == {"shadow"}
    remainder = default_specs[("remainder", "fa", 9)]
    assert remainder["epochs"] == 30 and not remainder["reshuffle"] and not remainder["wn"]
    assert remainder["observers"] == {"remainder": {"iterations": [66, 1260], "every": 60}}


def test_label_noise_runs_and_levels(default_specs):
    assert default_specs[("label_noise", "fa_p40", 5)]["label_noise"] == 40
    assert fa_config.label_noise_levels(default_specs) == [20, 40, 60, 80, 100]


def test_editing_one_eta_changes_exactly_that_conditions_specs(default_config, default_specs):
    edited = copy.deepcopy(default_config)
    edited["conditions"]["bp_wn"]["eta"] = 1e-4
    changed = {key for key, spec in run_specs(validate(edited)).items() if spec != default_specs[key]}
    # label_change and trajectory override eta, so their bp_wn runs keep theirs.
    assert changed == {key for key in default_specs if key[1] == "bp_wn" and key[0] not in ("label_change", "trajectory")}


def test_editing_open_loop_changes_no_spec(default_config, default_specs):
    edited = copy.deepcopy(default_config)
    edited["open_loop"]["eta"] = 0.01
    edited["embedding"]["pca_grid"] = 9
    assert run_specs(validate(edited)) == default_specs


# ---------------------------------------------------------------------------------------------
# Code hashes of a subpackage


def test_the_figures_hash_lists_every_module_of_the_figures_package():
    """Every file of fa_analysis/figures/ is in the figures jobs' modules, found from any of them."""
    files = sorted((fa_config.PACKAGE_DIR / "figures").glob("*.py"))
    expected = {"figures" if path.stem == "__init__" else f"figures.{path.stem}" for path in files}
    assert len(expected) >= 6
    for entry in ("figures", "figures.style", "fa_analysis.figures.labels"):
        modules = set(fa_config.package_modules(entry))
        assert expected <= modules and "aggregate" in modules, entry
        assert not modules & {"cli", "api", "train", "network"}, entry


def test_relative_imports_inside_a_subpackage_resolve_to_its_modules():
    import ast

    source = ("from . import style\nfrom .style import PALETTE\nfrom .. import aggregate\n"
              "from ..run_dir import read_run\nfrom fa_analysis.figures import labels\n"
              "import fa_analysis.figures.toy\nfrom fa_analysis import __version__\n")
    found = set(fa_config._imported_package_modules(ast.parse(source), "figures"))
    assert found == {"figures", "figures.style", "aggregate", "run_dir", "figures.labels", "figures.toy"}
    assert set(fa_config._imported_package_modules(ast.parse("from .data import load_prepared"), "")) == {"data"}


def test_editing_one_figures_module_changes_the_figures_hash_only(tmp_path, monkeypatch):
    """A copy of the package: a comment added to figures/labels.py changes code_hash("figures")
    (and source_hash of the subpackage's name), not the training hash."""
    import shutil

    from fa_analysis import artifacts

    copy_dir = tmp_path / "fa_analysis"
    shutil.copytree(fa_config.PACKAGE_DIR, copy_dir, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fa_config, "PACKAGE_DIR", copy_dir)
    monkeypatch.setattr(artifacts, "PACKAGE_DIR", copy_dir)
    before = {name: fa_config.code_hash(name) for name in ("figures", "train")}
    whole = artifacts.source_hash(["figures"])
    assert before["figures"] == fa_config.code_hash("figures")  # the hash is a function of the sources
    with (copy_dir / "figures" / "labels.py").open("a") as handle:
        handle.write("# an edit\n")
    assert fa_config.code_hash("figures") != before["figures"]
    assert artifacts.source_hash(["figures"]) != whole
    assert fa_config.code_hash("train") == before["train"]


# ---------------------------------------------------------------------------------------------
# The command line


def test_check_config_counts_the_runs(capsys):
    from fa_analysis.cli import main

    assert main(["check-config", str(fa_config.DEFAULT_CONFIG_PATH)]) == 0
    out = capsys.readouterr().out
    assert "267 training runs" in out and "terms: fa_fixed x30" in out and "remainder: fa x10" in out


def test_check_config_names_the_bad_key(tmp_path, capsys):
    from fa_analysis.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epochs: 0}\n")
    assert main(["check-config", str(bad)]) == 2
    assert "'training.epochs'" in capsys.readouterr().err
