import pytest
import yaml

from flame.config import ConfigError, load_config, profile_names


def test_all_profiles_validate():
    names = profile_names()
    assert {"tiny", "small", "paper", "clip"} <= set(names)
    for name in names:
        cfg = load_config(profile=name)
        assert cfg.profile == name
    assert load_config(profile="paper").text.layer == 39
    assert load_config(profile="clip").text.mode == "clip"


def test_default_profile_is_tiny():
    cfg = load_config()
    assert cfg.profile == "tiny"
    assert cfg.image.model == "vit_tiny_patch16_224" and cfg.image.img_size == 64


def test_bad_value_and_unknown_key_name_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"train": {"lr": -1, "bogus": 1}})
    msg = str(err.value)
    assert "train.lr" in msg and "greater than 0" in msg
    assert "train.bogus" in msg


def test_unknown_profile_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*tiny"):
        load_config(profile="nope")


def test_view_with_unknown_facet_set_fails(tmp_path):
    with pytest.raises(ConfigError, match="views.0.facet_set|views\\[0\\].facet_set"):
        load_config(overrides={"text": {"views": [{"field": "caption", "facet_set": "nope"}]}})


def test_extends_cycle_is_reported(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"profiles": {"a": {"extends": "b"}, "b": {"extends": "a"}}}))
    with pytest.raises(ConfigError, match="cycle"):
        load_config(p, "a")


def test_flat_dict_has_every_section():
    flat = load_config().to_flat_dict()
    assert flat["train.lr"] == 5e-4
    assert "text.facet_sets.long.facets" in flat
