"""Facet-decoupled attention: K prompts sharing one caption prefix in a single sequence.

Row layout: ``prefix | facet_1 | ... | facet_K | padding``. A prefix token attends
causally to the prefix; a facet token attends to the whole prefix and causally to its
own facet, never to another facet. Facet i's position ids restart at ``len(prefix)``,
so its last token sees exactly what it would see in a separate pass over
``prefix + facet_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD_SEGMENT = -1


@dataclass
class PromptTokens:
    """One caption's prompt pieces, already truncated to fit."""

    prefix: list[int]
    facets: list[list[int]]
    truncated: bool = False

    @property
    def packed_length(self) -> int:
        return len(self.prefix) + sum(len(f) for f in self.facets)

    def separate_sequences(self) -> list[list[int]]:
        return [self.prefix + facet for facet in self.facets]


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    segments: torch.Tensor  # [B, L]: 0 prefix, i facet i, -1 padding
    last_index: torch.Tensor  # [B, K] position of each facet's last token

    def attention_mask(self) -> torch.Tensor:
        """Boolean ``[B, 1, L, L]``, True where query (row) may attend to key (column)."""
        seg = self.segments
        length = seg.shape[1]
        idx = torch.arange(length, device=seg.device)
        causal = idx[None, :] <= idx[:, None]
        key_seg = seg[:, None, :]
        query_seg = seg[:, :, None]
        visible = (key_seg == 0) | (key_seg == query_seg)
        mask = causal[None] & visible & (key_seg != PAD_SEGMENT) & (query_seg != PAD_SEGMENT)
        # Padding queries see only themselves: a row with no visible key would give NaN.
        mask |= torch.eye(length, dtype=torch.bool, device=seg.device)[None]
        return mask[:, None]


def length_batches(lengths: list[int], batch_size: int, min_fill: float = 0.75) -> list[list[int]]:
    """Index batches, longest first; a new batch starts when a row would be padded by more
    than ``1 - min_fill`` of the batch's longest row, or the batch is full."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[i] >= min_fill * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pack(items: list[PromptTokens], pad_id: int) -> PackedBatch:
    """Lay out one batch (all items with the same K), right-padded to its longest row."""
    k = len(items[0].facets)
    if any(len(item.facets) != k for item in items):
        raise ValueError("every item of a packed batch needs the same number of facets")
    length = max(item.packed_length for item in items)
    n = len(items)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    segments = torch.full((n, length), PAD_SEGMENT, dtype=torch.long)
    last_index = torch.zeros((n, k), dtype=torch.long)
    for row, item in enumerate(items):
        p = len(item.prefix)
        input_ids[row, :p] = torch.tensor(item.prefix, dtype=torch.long)
        position_ids[row, :p] = torch.arange(p)
        segments[row, :p] = 0
        start = p
        for i, facet in enumerate(item.facets):
            end = start + len(facet)
            input_ids[row, start:end] = torch.tensor(facet, dtype=torch.long)
            position_ids[row, start:end] = torch.arange(p, p + len(facet))
            segments[row, start:end] = i + 1
            last_index[row, i] = end - 1
            start = end
    return PackedBatch(input_ids, position_ids, segments, last_index)


def model_attention_mask(mask: torch.Tensor, model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """transformers passes a 4D mask through unchanged: sdpa takes booleans, eager adds it to the scores."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body without the LM head (whose vocab-sized output we never need)."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return body if isinstance(body, torch.nn.Module) else model


@torch.inference_mode()
def packed_forward(model: torch.nn.Module, batch: PackedBatch, layer: int) -> torch.Tensor:
    """``[B, K, D]`` hidden states of ``hidden_states[layer]`` at each facet's last token."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mask = model_attention_mask(batch.attention_mask().to(device), model, dtype)
    out = decoder_of(model)(
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
        attention_mask=mask,
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[layer]
    index = batch.last_index.to(device)
    rows = torch.arange(hidden.shape[0], device=device)[:, None]
    return hidden[rows, index]


@torch.inference_mode()
def separate_forward(model: torch.nn.Module, sequences: list[list[int]], pad_id: int, layer: int) -> torch.Tensor:
    """``[N, D]``: the ordinary way, one prompt per row with a plain 2D padding mask."""
    device = next(model.parameters()).device
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    out = decoder_of(model)(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[layer]
    last = torch.tensor([len(s) - 1 for s in sequences], device=device)
    return hidden[torch.arange(len(sequences), device=device), last]
