"""Caption normalisation and the facet-set configuration."""

from __future__ import annotations

import pytest
import yaml

from flame.config import ConfigError, load_config, repo_root
from flame.text.prompts import normalise_caption, prompt_texts
from tests.fixtures.text import REFERENCE_FACETS


@pytest.mark.parametrize(
    "raw, expected",
    [
        # the reference's rules: a final "." unless it ends in . ? " '; " -> '; a final ? -> .
        ("A dog runs on the beach", "A dog runs on the beach."),
        ("A child in a pink dress is climbing up a set of stairs in an entry way .",
         "A child in a pink dress is climbing up a set of stairs in an entry way ."),
        ('A sign saying "stop"', "A sign saying 'stop'"),
        ('"A dog runs on the beach."', "'A dog runs on the beach.'"),
        ("Is it raining?", "Is it raining."),
        ("Two dogs' toys'", "Two dogs' toys'"),
        ("Wow!", "Wow!."),
        ("  two\n lines\tof text ", "two lines of text."),
        ("穿着连衣裙的小女孩。", "穿着连衣裙的小女孩。."),
        ("طفلة صغيرة تتسلق الدرج إلى منزلها؟", "طفلة صغيرة تتسلق الدرج إلى منزلها؟."),
        ("   ", ""),
        ("", ""),
    ],
)
def test_normalise_caption(raw, expected):
    assert normalise_caption(raw) == expected
    assert normalise_caption(expected) == expected  # idempotent: normalising twice changes nothing


def test_profile_facet_sets_are_the_reference_prompts():
    for profile in ("tiny", "small", "paper"):
        sets = load_config(profile=profile).text.facet_sets
        assert {name: len(fs.facets) for name, fs in sets.items()} == {"raw": 1, "short": 3, "long": 7}
        assert sets["long"].prefix == 'Detailed Image description : "{caption}" . After thinking step by step , {bos}'
        assert sets["short"].prefix == 'Image description : "{caption}" . After thinking step by step , {bos}'
        assert sets["raw"].prefix == 'Image description : "{caption}" . After thinking step by step ,'
        assert sets["long"].facets == REFERENCE_FACETS
        assert sets["short"].facets == REFERENCE_FACETS[:3]
        assert sets["raw"].facets == REFERENCE_FACETS[:1]
    text = load_config(profile="tiny").text
    raw = prompt_texts("A red car", text.facet_sets["raw"])
    short = prompt_texts("A red car", text.facet_sets["short"], "<s>")
    assert raw == ['Image description : "A red car." . After thinking step by step , this image description means in just one word:"']
    # the raw prompt has no separator, so it is not short facet 1
    assert short[0] == 'Image description : "A red car." . After thinking step by step , <s> this image description means in just one word:"'
    assert raw[0] != short[0]


def _write_params(tmp_path, mutate):
    params = yaml.safe_load((repo_root() / "params.yaml").read_text(encoding="utf-8"))
    mutate(params["profiles"]["tiny"]["text"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_bad_facet_set_config_names_the_key(tmp_path):
    def no_placeholder(text):
        text["facet_sets"]["short"]["prefix"] = "no caption here"

    with pytest.raises(ConfigError, match=r"text\.facet_sets\.short\.prefix.*\{caption\}"):
        load_config(_write_params(tmp_path, no_placeholder))

    def bos_before_caption(text):
        text["facet_sets"]["short"]["prefix"] = '{bos} Image description : "{caption}"'

    with pytest.raises(ConfigError, match=r"text\.facet_sets\.short\.prefix.*\{bos\} may only come after"):
        load_config(_write_params(tmp_path, bos_before_caption))

    def placeholder_in_facet(text):
        text["facet_sets"]["long"]["facets"][2] = " {caption} again"

    with pytest.raises(ConfigError, match=r"text\.facet_sets\.long\.facets.*facets\[2\]"):
        load_config(_write_params(tmp_path, placeholder_in_facet))

    params = yaml.safe_load((repo_root() / "params.yaml").read_text(encoding="utf-8"))
    params["profiles"]["tiny"]["eval"]["text_protocols"] = {"retrieval": "medium"}
    path = tmp_path / "protocols.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"eval\.text_protocols\.retrieval='medium'"):
        load_config(path)

    def unknown_view(text):
        text["views"] = [{"field": "caption", "facet_set": "medium"}]

    with pytest.raises(ConfigError, match=r"views\[0\]\.facet_set='medium'"):
        load_config(_write_params(tmp_path, unknown_view))

    def bad_max_tokens(text):
        text["max_tokens"] = 2

    with pytest.raises(ConfigError, match=r"text\.max_tokens"):
        load_config(_write_params(tmp_path, bad_max_tokens))
