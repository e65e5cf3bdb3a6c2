"""Caption normalisation and the facet-set configuration."""

from __future__ import annotations

import pytest
import yaml

from flame.config import ConfigError, load_config, repo_root
from flame.text.prompts import normalise_caption, prompt_texts, split_prefix


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('"A dog runs on the beach."', "A dog runs on the beach"),
        ("A child in a pink dress is climbing up a set of stairs in an entry way .",
         "A child in a pink dress is climbing up a set of stairs in an entry way"),
        ('A sign saying "stop" !!  ', "A sign saying 'stop'"),
        ("  two\n lines\tof text ... ", "two lines of text"),
        ("穿着连衣裙的小女孩。", "穿着连衣裙的小女孩"),
        ("طفلة صغيرة تتسلق الدرج إلى منزلها؟", "طفلة صغيرة تتسلق الدرج إلى منزلها"),
        ("   ", ""),
        ('""', ""),
    ],
)
def test_normalise_caption(raw, expected):
    assert normalise_caption(raw) == expected


def test_profile_facet_sets_match_the_paper():
    text = load_config(profile="tiny").text
    assert {name: len(fs.facets) for name, fs in text.facet_sets.items()} == {"raw": 1, "short": 3, "long": 7}
    for fs in text.facet_sets.values():
        head, tail = split_prefix(fs)
        assert head and '"' in head and '"' in tail
        assert all(facet.endswith(':"') for facet in fs.facets)  # PromptEOL: the answer word comes next
    prompts = prompt_texts('"A red car."', text.facet_sets["short"])
    assert len(prompts) == 3 and all(p.startswith('Image caption: "A red car"') for p in prompts)


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

    def unknown_view(text):
        text["views"] = [{"field": "caption", "facet_set": "medium"}]

    with pytest.raises(ConfigError, match=r"views\[0\]\.facet_set='medium'"):
        load_config(_write_params(tmp_path, unknown_view))

    def bad_max_tokens(text):
        text["max_tokens"] = 2

    with pytest.raises(ConfigError, match=r"text\.max_tokens"):
        load_config(_write_params(tmp_path, bad_max_tokens))
