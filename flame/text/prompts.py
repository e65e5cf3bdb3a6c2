"""Caption normalisation and PromptEOL prompt pieces.

A facet set's ``prefix`` is ``head + {caption} + tail``; the parts are tokenised
separately so that an over-long caption can be cut at a token boundary without ever
touching the template, and so that the single pass and the K separate passes see the
very same token ids. ``{bos}`` in the tail marks where the separator token goes; it is
inserted as that token's id, never tokenised as text.
"""

from __future__ import annotations

import re

from flame.config import BOS_PLACEHOLDER, CAPTION_PLACEHOLDER, FacetSet

# Bump when normalise_caption changes: it is part of the embedding store fingerprint.
NORMALISATION_VERSION = 2

_SPACES = re.compile(r"\s+")
# A caption ending in one of these gets no added full stop (the reference's rule).
_FINAL_MARKS = ".?\"'"


def normalise_caption(text: str) -> str:
    """The FLAME reference's caption rules, after collapsing whitespace: add a final ``.``
    unless the caption ends in ``. ? " '``; turn every ``"`` into ``'`` (the prompt itself
    quotes the caption); a final ``?`` becomes ``.``. An empty result means no content."""
    text = _SPACES.sub(" ", text).strip()
    if not text:
        return ""
    if text[-1] not in _FINAL_MARKS:
        text += "."
    text = text.replace('"', "'")
    if text.endswith("?"):
        text = text[:-1] + "."
    return text


def split_prefix(facet_set: FacetSet) -> tuple[str, str]:
    """``(head, tail)`` around the ``{caption}`` placeholder of the prefix."""
    head, _, tail = facet_set.prefix.partition(CAPTION_PLACEHOLDER)
    return head, tail


def split_on_bos(text: str) -> list[str]:
    """Text pieces between ``{bos}`` placeholders: a separator goes between consecutive pieces."""
    return text.split(BOS_PLACEHOLDER)


def prompt_texts(caption: str, facet_set: FacetSet, bos_text: str = "") -> list[str]:
    """The K full prompt strings, ``{bos}`` shown as ``bos_text``, for display and tests."""
    prefix = facet_set.prefix.replace(CAPTION_PLACEHOLDER, normalise_caption(caption))
    prefix = prefix.replace(BOS_PLACEHOLDER, bos_text)
    return [prefix + facet for facet in facet_set.facets]
