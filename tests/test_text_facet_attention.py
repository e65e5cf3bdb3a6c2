"""The facet-decoupled layout and mask, checked on hand-made token ids (no LLM)."""

from __future__ import annotations

import torch

from flame.text.facet_attention import PromptTokens, length_batches, pack


def test_mask_positions_and_last_tokens():
    # prefix of 3 tokens, facets of 2 and 3 tokens; second row shorter (padded)
    items = [PromptTokens([1, 2, 3], [[4, 5], [6, 7, 8]]), PromptTokens([1, 2], [[4], [6]])]
    batch = pack(items, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 4, 6, 0, 0, 0, 0]]
    # each facet's positions restart where the prefix ends
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    assert batch.position_ids[1, :4].tolist() == [0, 1, 2, 2]
    assert batch.last_index.tolist() == [[4, 7], [2, 3]]

    mask = batch.attention_mask()[:, 0]
    assert mask.shape == (2, 8, 8) and mask.dtype == torch.bool
    row = mask[0].int().tolist()
    assert row[2] == [1, 1, 1, 0, 0, 0, 0, 0]  # prefix: causal
    assert row[4] == [1, 1, 1, 1, 1, 0, 0, 0]  # facet 1: prefix + itself
    assert row[5] == [1, 1, 1, 0, 0, 1, 0, 0]  # facet 2 starts: prefix, never facet 1
    assert row[7] == [1, 1, 1, 0, 0, 1, 1, 1]
    # padding: invisible to real tokens, and each pad row sees itself (no all-masked row -> no NaN)
    assert not mask[1, :4, 4:].any()
    assert mask[1, 4:, :].int().tolist() == torch.eye(8, dtype=torch.int)[4:].tolist()
    assert mask.any(dim=-1).all()


def test_length_batches_sort_and_limit_padding():
    lengths = [10, 100, 95, 12, 50, 11, 99]
    batches = length_batches(lengths, batch_size=2)
    assert [i for b in batches for i in b] == [1, 6, 2, 4, 3, 5, 0]  # longest first, every index once
    assert all(len(b) <= 2 for b in batches)
    for b in batches:
        assert min(lengths[i] for i in b) >= 0.75 * max(lengths[i] for i in b)
    assert length_batches([5, 5, 5], batch_size=8) == [[0, 1, 2]]
