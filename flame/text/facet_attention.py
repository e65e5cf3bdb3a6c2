"""Facet-decoupled attention: K prompts sharing one caption prefix, the prefix computed once.

A facet token attends to the whole prefix and causally to its own facet, never to
another facet. Facet i's positions continue from ``len(prefix)``, so its last token sees
exactly what it would see in a separate pass over ``prefix + facet_i``.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class PromptTokens:
    """One caption's prompt pieces, already truncated to fit."""

    prefix: list[int]
    facets: list[list[int]]
    truncated: bool = False

    @property
    def token_count(self) -> int:
        """Tokens the shared-prefix pass computes: the prefix once, then every facet."""
        return len(self.prefix) + sum(len(f) for f in self.facets)

    def separate_sequences(self) -> list[list[int]]:
        return [self.prefix + facet for facet in self.facets]


PAD_SEGMENT = -1


@dataclass
class FacetBatch:
    """A batch of captions with the same K, laid out for ``shared_prefix_forward``: the
    prefixes right-padded, and each caption's K facets concatenated into one row."""

    prefix_ids: torch.Tensor  # [B, P]
    prefix_lengths: torch.Tensor  # [B]
    facet_ids: torch.Tensor  # [B, F]: facet_1 | ... | facet_K | padding
    facet_positions: torch.Tensor  # [B, F]: facet i's positions continue from its prefix
    segments: torch.Tensor  # [B, F]: facet index, PAD_SEGMENT on padding
    last_index: torch.Tensor  # [B, K]: each facet's last token in the facet row

    def facet_attention_mask(self) -> torch.Tensor:
        """Boolean ``[B, 1, F, P + F]``: a facet token sees its caption's real prefix tokens
        and, causally, its own facet, never another facet. Padding queries see the first
        prefix token (a row with no visible key would give NaN)."""
        n, length = self.facet_ids.shape
        prefix = torch.arange(self.prefix_ids.shape[1])[None, :] < self.prefix_lengths[:, None]
        idx = torch.arange(length)
        causal = idx[:, None] >= idx[None, :]
        own = causal[None] & (self.segments[:, :, None] == self.segments[:, None, :]) & (self.segments[:, None, :] != PAD_SEGMENT)
        return torch.cat([prefix[:, None, :].expand(n, length, -1), own], dim=2)[:, None]


def facet_batch(items: list[PromptTokens], pad_id: int) -> FacetBatch:
    k = len(items[0].facets)
    if any(len(item.facets) != k for item in items):
        raise ValueError("every item of a facet batch needs the same number of facets")
    n = len(items)
    p = max(len(item.prefix) for item in items)
    f = max(sum(len(facet) for facet in item.facets) for item in items)
    prefix_ids = torch.full((n, p), pad_id, dtype=torch.long)
    facet_ids = torch.full((n, f), pad_id, dtype=torch.long)
    positions = torch.zeros((n, f), dtype=torch.long)
    segments = torch.full((n, f), PAD_SEGMENT, dtype=torch.long)
    last_index = torch.zeros((n, k), dtype=torch.long)
    for row, item in enumerate(items):
        prefix_ids[row, : len(item.prefix)] = torch.tensor(item.prefix, dtype=torch.long)
        start = 0
        for i, facet in enumerate(item.facets):
            end = start + len(facet)
            facet_ids[row, start:end] = torch.tensor(facet, dtype=torch.long)
            positions[row, start:end] = torch.arange(len(item.prefix), len(item.prefix) + len(facet))
            segments[row, start:end] = i
            last_index[row, i] = end - 1
            start = end
    prefix_lengths = torch.tensor([len(item.prefix) for item in items], dtype=torch.long)
    return FacetBatch(prefix_ids, prefix_lengths, facet_ids, positions, segments, last_index)


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


def model_attention_mask(mask: torch.Tensor, model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """transformers passes a 4D mask through unchanged: sdpa takes booleans, eager adds it to the scores."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)


def _cache_argument(decoder: torch.nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept both."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def _shared_kv_heads(device: torch.device):
    """On a CPU, let a masked sdpa call share grouped key/value heads (torch's ``enable_gqa``)
    instead of transformers copying them per query head first: same numbers, less copying.
    (On CUDA a mask with ``enable_gqa`` falls back to the slow math kernel, so not there.)"""
    if device.type != "cpu":
        yield
        return
    before = os.environ.get(GQA_SWITCH)
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(GQA_SWITCH, None)
        else:
            os.environ[GQA_SWITCH] = before


@torch.inference_mode()
def shared_prefix_forward(decoder: torch.nn.Module, batch: FacetBatch) -> torch.Tensor:
    """``[B, K, D]``: each facet's last-token state, the shared prefix computed once.

    First the prefixes run as a plain causal batch that keeps its keys and values. They are
    right-padded, so no real token ever looks at padding and no mask is needed: attention
    takes its causal fast path. Then each caption's K facets run as one row against that
    cache, a facet seeing the real prefix and itself only. Attention work per caption is
    about ``P^2/2 + K*F*(P+K*F)`` against ``(P+K*F)^2`` for one masked packed sequence and
    ``K*(P+F)^2`` for K separate passes.
    """
    parameter = next(decoder.parameters())
    device, dtype = parameter.device, parameter.dtype
    name = _cache_argument(decoder)
    first = decoder(input_ids=batch.prefix_ids.to(device), use_cache=True)
    cache = getattr(first, name, None)
    if cache is None:  # an output field still named past_key_values
        cache = first.past_key_values
    mask = model_attention_mask(batch.facet_attention_mask().to(device), decoder, dtype)
    with _shared_kv_heads(device):
        hidden = decoder(
            input_ids=batch.facet_ids.to(device),
            position_ids=batch.facet_positions.to(device),
            attention_mask=mask,
            use_cache=True,
            **{name: cache},
        ).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=device)[:, None]
    return hidden[rows, batch.last_index.to(device)]


@torch.inference_mode()
def separate_forward(decoder: torch.nn.Module, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """``[N, D]``: the ordinary way, one prompt per row with a plain 2D padding mask."""
    device = next(decoder.parameters()).device
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).last_hidden_state
    last = torch.tensor([len(s) - 1 for s in sequences], device=device)
    return hidden[torch.arange(len(sequences), device=device), last]
