"""One source of defaults: the analyses' settings take what a config leaves out from the schema."""

import pytest

from fa_analysis import settings
from fa_analysis.alignment_terms import AlignmentTermsSettings
from fa_analysis.config import load_config
from fa_analysis.embedding import PCASettings, UMAPSettings
from fa_analysis.open_loop import BetaSweepSettings
from fa_analysis.remainder import RemainderSettings


@pytest.fixture(scope="module")
def protocol():
    return load_config()  # config.yaml, which a test in test_config keeps equal to the schema's defaults


def test_settings_left_empty_are_the_protocols(protocol):
    terms = AlignmentTermsSettings.from_dict({})
    for key in ("iterations", "max_lag", "lags_over_time", "every"):
        expected = protocol["alignment_terms"][key]
        assert getattr(terms, key) == (tuple(expected) if isinstance(expected, list) else expected), key
    remainder = RemainderSettings.from_dict({})
    assert remainder.iterations == tuple(protocol["remainder"]["iterations"])
    assert remainder.every == protocol["remainder"]["every"]
    pca = PCASettings.from_dict({})
    for key in ("pca_grid", "pca_margin", "landscape_train_subset"):
        assert getattr(pca, key) == protocol["embedding"][key], key
    assert UMAPSettings.from_dict({}).__dict__ == protocol["embedding"]["umap"]
    sweep = {key: value for key, value in protocol["open_loop"]["beta_sweep"].items() if key != "input"}
    assert BetaSweepSettings.from_dict({"beta_sweep": sweep}).input == protocol["open_loop"]["beta_sweep"]["input"]


def test_a_given_key_wins_and_the_rest_stay_the_schemas():
    terms = AlignmentTermsSettings.from_dict({"max_lag": 5})
    assert terms.max_lag == 5
    assert terms.lags_over_time == tuple(settings.schema_defaults("alignment_terms")["lags_over_time"])


def test_schema_defaults_are_fresh_copies_and_name_a_missing_section():
    first = settings.schema_defaults("remainder")
    first["iterations"].append(-1)
    assert -1 not in settings.schema_defaults("remainder")["iterations"]
    with pytest.raises(KeyError, match="embedding.tsne"):
        settings.schema_defaults("embedding", "tsne")


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(KeyError, match=r"remainder has unknown keys \['evry'\]"):
        RemainderSettings.from_dict({"evry": 3})
