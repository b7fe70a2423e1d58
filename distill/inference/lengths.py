"""How long a (query, document) pair is, in the units a stage's cost scales with.

A stage's cost model (:class:`distill.cascade.model.StageCost`) counts pairs; pairs are not equal:
a lexical stage (LightGBM's features) reads every character of a document, a neural stage
tokenizes it and attends over at most its ``max_length`` tokens. :func:`estimate_tokens` is the
one length estimate (about four characters per subword token, as BERT-style and Llama-style
tokenizers average on English text; no tokenizer call, so planning a request costs microseconds)
and :func:`pair_weights` turns lengths into *reference pairs*: a pair counts as
``max(1, tokens / REFERENCE_TOKENS)`` of the pairs the cost model was measured on, with the
tokens capped at the stage's ``max_length`` where it truncates. Pairs up to the reference
length (a passage of ~1,000 characters, the size of the corpora costs are usually measured on)
weigh 1, so ordinary requests are planned exactly as before; a 20,000-character document weighs
up to 20 in a stage that reads it whole. Batching by tokens can reuse :func:`estimate_tokens`.

A stage that scores long documents by passages (:mod:`distill.inference.passages`: its ranker's
``passages``) scores a document as :func:`~distill.inference.passages.passages_for` pairs of a
window each: the pair weighs that many passages of ``max(1, window / REFERENCE_TOKENS)`` each,
however long the document (the pair's estimated tokens count as the document's, so a passage more
at most: the query's few tokens; a planner's error on the safe side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.inference.passages import PassageConfig, passages_for

CHARS_PER_TOKEN = 4.0
REFERENCE_TOKENS = 256  # the pair length a stage cost's per-pair part stands for (weight 1)


def estimate_tokens(chars: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Estimated subword tokens of texts of ``chars`` characters (at least 1 each)."""
    return np.maximum(np.ceil(np.asarray(chars, dtype=np.float64) / CHARS_PER_TOKEN), 1.0)


def pair_weights(pair_chars: Sequence[int] | np.ndarray, max_tokens: int | None = None,
                 passages: PassageConfig | None = None) -> np.ndarray:
    """Each (query, document) pair's weight in reference pairs (see the module docstring), from its
    length in characters (query plus document); ``max_tokens``: the stage truncates pairs to that
    many tokens (None: it reads them whole); ``passages``: it scores documents by these passages
    (resolved), each a pair of the window's tokens."""
    tokens = estimate_tokens(pair_chars)
    if passages is not None:
        return passages_for(tokens, passages) * max(passages.tokens / REFERENCE_TOKENS, 1.0)
    if max_tokens is not None:
        tokens = np.minimum(tokens, max_tokens)
    return np.maximum(tokens / REFERENCE_TOKENS, 1.0)


def token_cap(ranker: Any) -> int | None:
    """The tokens a ranker truncates each pair (or text) to: a cross-encoder's ``max_length``, a
    bi-encoder's ``max_seq_length``; None for rankers that read documents whole (lexical ones)."""
    for cap in (getattr(ranker, "max_length", None), getattr(getattr(ranker, "model", None), "max_seq_length", None)):
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            return cap
    return None


def passage_config(ranker: Any) -> PassageConfig | None:
    """The passages a ranker scores long documents by (a cross-encoder's resolved ``passages``, as
    its fingerprint or ``distill.json`` recorded them); None for one that truncates or reads whole."""
    config = getattr(ranker, "passages", None)
    return config if isinstance(config, PassageConfig) and config.tokens is not None else None
