"""The shared-prefix facet layout and mask, checked on hand-made token ids (no LLM)."""

from __future__ import annotations

import torch

from flame.text.facet_attention import PromptTokens, facet_batch, length_batches


def test_layout_positions_and_mask():
    # prefix of 3 tokens, facets of 2 and 3 tokens; second caption shorter (padded)
    items = [PromptTokens([1, 2, 3], [[4, 5], [6, 7, 8]]), PromptTokens([1, 2], [[4], [6]])]
    batch = facet_batch(items, pad_id=0)
    assert batch.prefix_ids.tolist() == [[1, 2, 3], [1, 2, 0]] and batch.prefix_lengths.tolist() == [3, 2]
    assert batch.facet_ids.tolist() == [[4, 5, 6, 7, 8], [4, 6, 0, 0, 0]]
    # each facet continues from its own caption's prefix length
    assert batch.facet_positions.tolist() == [[3, 4, 3, 4, 5], [2, 2, 0, 0, 0]]
    assert batch.last_index.tolist() == [[1, 4], [0, 1]]

    mask = batch.facet_attention_mask()[:, 0]
    assert mask.shape == (2, 5, 8) and mask.dtype == torch.bool  # [B, F, P + F]
    row = mask[0].int().tolist()
    assert row[1] == [1, 1, 1, 1, 1, 0, 0, 0]  # facet 1: the prefix + itself
    assert row[2] == [1, 1, 1, 0, 0, 1, 0, 0]  # facet 2 starts: the prefix, never facet 1
    assert row[4] == [1, 1, 1, 0, 0, 1, 1, 1]
    # caption 2: its prefix padding and facet padding are invisible; pad rows see the first token
    assert mask[1].int().tolist()[1] == [1, 1, 0, 0, 1, 0, 0, 0]
    assert not mask[1, :, 2].any() and not mask[1, :2, 5:].any()
    assert mask.any(dim=-1).all()


def test_length_batches_sort_and_limit_padding():
    lengths = [10, 100, 95, 12, 50, 11, 99]
    batches = length_batches(lengths, batch_size=2)
    assert [i for b in batches for i in b] == [1, 6, 2, 4, 3, 5, 0]  # longest first, every index once
    assert all(len(b) <= 2 for b in batches)
    for b in batches:
        assert min(lengths[i] for i in b) >= 0.75 * max(lengths[i] for i in b)
    assert length_batches([5, 5, 5], batch_size=8) == [[0, 1, 2]]
