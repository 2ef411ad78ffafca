"""The run spec: one definition of its fields, their order and defaults, one validation."""

import subprocess
import sys
from dataclasses import fields

import pytest

from fa_analysis import config as fa_config
from fa_analysis import network, spec
from fa_analysis.spec import SPEC_KEYS, RunSpec, spec_dict


def test_a_spec_left_empty_is_the_protocols_main_fa_run():
    """The dataclass has no defaults of its own: they are the schema's, through the config expansion."""
    protocol = fa_config.run_specs(fa_config.load_config())[spec.DEFAULT_RUN]
    default = RunSpec().to_dict()
    assert default.pop("threads") == fa_config.load_config()["training"]["threads"]
    assert default == protocol
    assert list(default) == list(protocol)


def test_spec_keys_are_the_dataclass_fields_in_order():
    assert SPEC_KEYS == tuple(f.name for f in fields(RunSpec))[:-1]
    assert fa_config.SPEC_KEYS is SPEC_KEYS
    for run in fa_config.run_specs(fa_config.load_config()).values():
        assert tuple(run) == SPEC_KEYS


def test_the_spec_names_the_networks_activations_and_rules():
    assert tuple(network.ACTIVATIONS) == spec.ACTIVATION_NAMES
    assert network.RULES == spec.RULES


def test_a_spec_dict_and_a_run_spec_follow_one_validation():
    values = RunSpec().to_dict()
    values.pop("threads")
    for changes, named in (({"gamma": 0.6}, "gamma"), ({"wn": True}, "gamma"), ({"sizes": [225, 10]}, "sizes")):
        with pytest.raises(ValueError, match=named):
            spec_dict(**{**values, **changes})
        with pytest.raises(ValueError, match=named):
            RunSpec(**{**values, **changes})


def test_spec_dict_reads_numbers_as_floats_and_fills_phases():
    values = {**RunSpec().to_dict(), "eta": 1, "init_std": 1, "phases": None, "epochs": 4}
    values.pop("threads")
    made = spec_dict(**values)
    assert made["eta"] == 1.0 and isinstance(made["eta"], float) and isinstance(made["init_std"], float)
    assert made["phases"] == [4]
    with pytest.raises(ValueError, match="lacks"):
        spec_dict(**{key: value for key, value in values.items() if key != "seed"})


def test_the_spec_module_does_not_import_torch():
    code = "import sys; from fa_analysis import spec; spec.RunSpec(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_training_code_hash_covers_spec_engine_run_dir_and_loop_but_not_the_config():
    modules = set(fa_config.package_modules("train"))
    assert {"spec", "engine", "run_dir", "train", "network", "data"} <= modules
    assert not modules & {"config", "cli", "alignment_terms", "shadow", "remainder", "history"}
    assert "run_dir" in fa_config.package_modules("aggregate") and "run_dir" in fa_config.package_modules("embedding")
