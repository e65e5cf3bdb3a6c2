"""Caption normalisation and PromptEOL prompt pieces.

A facet set's ``prefix`` is ``head + {caption} + tail``; the three parts are tokenised
separately so that an over-long caption can be cut at a token boundary without ever
touching the template, and so that the single pass and the K separate passes see the
very same token ids.
"""

from __future__ import annotations

import re

from flame.config import FacetSet

# Bump when normalise_caption changes: it is part of the embedding store fingerprint.
NORMALISATION_VERSION = 1

_DOUBLE_QUOTES = '"\u201c\u201d\u201e\u00ab\u00bb'
_TRAILING = " \t\r\n.,;:!?\u3002\uff0c\uff1b\uff1a\uff01\uff1f\u3001\u2026\u060c\u061b\u061f"
_SPACES = re.compile(r"\s+")


def normalise_caption(text: str) -> str:
    """Collapse whitespace, drop surrounding double quotes, turn inner ones into ``'``
    (the prompt itself quotes the caption) and strip trailing punctuation.
    An empty result means the caption has no content."""
    text = _SPACES.sub(" ", text).strip()
    text = text.strip(_DOUBLE_QUOTES + " ")
    for quote in _DOUBLE_QUOTES:
        text = text.replace(quote, "'")
    return text.rstrip(_TRAILING)


def split_prefix(facet_set: FacetSet) -> tuple[str, str]:
    """``(head, tail)`` around the ``{caption}`` placeholder of the prefix."""
    head, _, tail = facet_set.prefix.partition("{caption}")
    return head, tail


def prompt_texts(caption: str, facet_set: FacetSet) -> list[str]:
    """The K full prompt strings, for display and debugging."""
    prefix = facet_set.prefix.replace("{caption}", normalise_caption(caption))
    return [prefix + facet for facet in facet_set.facets]
