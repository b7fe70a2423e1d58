"""Long documents as passages: FirstP, MaxP and SumP (Dai & Callan, SIGIR 2019).

A cross-encoder that sees ``max_length`` tokens per pair scores a long document by its
beginning only. With passages, each document is split into windows of ``tokens`` tokens of the
model's own tokenizer (the document alone, without the query), one window starting every
``stride`` tokens until a window reaches the document's end; each (query, passage) pair is
scored and the passage scores are combined into the document's: the first passage's
(``first``, FirstP), their maximum (``max``, MaxP) or their sum (``sum``, SumP). A passage is
the document's text from its window's first token to its last (the tokenizer's character
offsets), so it is scored exactly as a document of that text would be, and the passages of
all documents go through the model's token-budget batching together.

It sits in the inference layer because three layers use it: the cross-encoder teacher scores
with it (``distill score-teacher --passages``), a cross-encoder student trained from such a
cache scores with the choice its ``distill.json`` records, and the cascade's deadline planner
counts a document's passages (:func:`passages_for`, through :mod:`distill.inference.lengths`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.core.errors import ConfigError

PASSAGE_MODES = ("first", "max", "sum")
MIN_PASSAGE_TOKENS = 8

Progress = Callable[[int], None]


@dataclass(frozen=True)
class PassageConfig:
    """How long documents are split and their passages' scores combined (the single home of the defaults).

    ``tokens`` None is the model's ``max_length`` (so that FirstP scores what truncation
    scores), ``stride`` None half the window; :meth:`resolve` fills both in for a model.
    Errors name the command's options (``passages``, ``passage_tokens``, ``passage_stride``).
    """

    mode: str
    tokens: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in PASSAGE_MODES:
            raise ConfigError(f"unknown passage mode {self.mode!r}; choose from {', '.join(PASSAGE_MODES)}",
                              field="passages")
        if self.tokens is not None and self.tokens < MIN_PASSAGE_TOKENS:
            raise ConfigError(f"passages need at least {MIN_PASSAGE_TOKENS} tokens, got {self.tokens}",
                              field="passage_tokens")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"the stride must be positive, got {self.stride}", field="passage_stride")
        if self.stride is not None and self.tokens is not None and self.stride > self.tokens:
            raise ConfigError(f"a stride of {self.stride} tokens over windows of {self.tokens} would skip text",
                              field="passage_stride")

    @classmethod
    def from_options(cls, mode: str | None, tokens: int | None, stride: int | None) -> PassageConfig | None:
        """The config the command's options ask for; None (truncation) without ``mode``."""
        if mode is None:
            given = [name for name, value in (("passage_tokens", tokens), ("passage_stride", stride))
                     if value is not None]
            if given:
                raise ConfigError(f"{given[0]} applies with --passages only", field=given[0])
            return None
        return cls(mode, tokens, stride)

    def resolve(self, max_length: int) -> PassageConfig:
        """This config with the defaults filled in for a model of ``max_length`` tokens per pair."""
        tokens = max_length if self.tokens is None else self.tokens
        if tokens > max_length:
            raise ConfigError(f"passages of {tokens} tokens do not fit the model's max_length {max_length}; "
                              "lower --passage-tokens or raise --max-length", field="passage_tokens")
        return PassageConfig(self.mode, tokens, max(1, tokens // 2) if self.stride is None else self.stride)

    def within(self, max_length: int) -> PassageConfig:
        """This config resolved for a model of ``max_length`` tokens per pair, its window cut to ``max_length``
        where longer (and the stride to the window): what a student that reads fewer tokens than its teacher's
        passages scores with."""
        tokens = max_length if self.tokens is None else min(self.tokens, max_length)
        return PassageConfig(self.mode, tokens, None if self.stride is None else min(self.stride, tokens)).resolve(
            max_length)

    def to_dict(self) -> dict[str, Any]:
        """As a teacher's fingerprint and a student's ``distill.json`` record it (resolved: every value given)."""
        return {"mode": self.mode, "tokens": self.tokens, "stride": self.stride}


@dataclass(frozen=True)
class Passages:
    """The (query, passage) pairs of a list of (query, document) pairs, and the pair each came from."""

    queries: list[str]
    texts: list[str]
    owner: np.ndarray  # index of the pair each passage belongs to, ascending


def passages_for(tokens: int | Sequence[int] | np.ndarray, config: PassageConfig) -> np.ndarray:
    """How many passages documents of ``tokens`` tokens are scored as under a resolved ``config``: one for
    FirstP, else one window every ``stride`` tokens until a window reaches the end (one for a document that
    fits the window, or has no tokens). What the splitting and the cascade's deadline planner both count."""
    assert config.tokens is not None and config.stride is not None, "resolve() the config first"
    n = np.asarray(tokens, dtype=np.float64)
    if config.mode == "first":
        return np.ones(n.shape, dtype=np.int64)
    return 1 + np.maximum(np.ceil((n - config.tokens) / config.stride), 0.0).astype(np.int64)


def window_starts(n_tokens: int, config: PassageConfig) -> list[int]:
    """Where the windows of a document of ``n_tokens`` tokens start under a resolved ``config``
    (:func:`passages_for` of them, ``stride`` apart)."""
    return [i * config.stride for i in range(int(passages_for(n_tokens, config)))]


def split_passages(tokenizer: Any, queries: Sequence[str], docs: Sequence[str], config: PassageConfig) -> Passages:
    """Each document's passages under a resolved ``config`` (only the first for FirstP).

    ``tokenizer`` is a Hugging Face fast tokenizer (it gives the character offsets); a
    document without tokens is one passage, itself.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("passages need a fast tokenizer (character offsets)", field="passages")
    assert config.tokens is not None and config.stride is not None, "resolve() the config first"
    offsets = tokenizer(list(docs), add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)["offset_mapping"]
    out_queries, texts, owner = [], [], []
    for i, (query, doc, spans) in enumerate(zip(queries, docs, offsets)):
        starts = window_starts(len(spans), config) if spans else []
        pieces = [doc[spans[s][0]:spans[min(s + config.tokens, len(spans)) - 1][1]] for s in starts] or [doc]
        out_queries += [query] * len(pieces)
        texts += pieces
        owner += [i] * len(pieces)
    return Passages(out_queries, texts, np.asarray(owner, dtype=np.int64))


def combine(scores: np.ndarray, owner: np.ndarray, n_pairs: int, mode: str) -> np.ndarray:
    """One score per pair from its passages' ``scores``: the first's, the maximum or the sum (float32)."""
    out = np.full(n_pairs, -np.inf if mode == "max" else 0.0, dtype=np.float64)
    if mode == "max":
        np.maximum.at(out, owner, scores)
    elif mode == "sum":
        np.add.at(out, owner, scores)
    else:
        first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        out[owner[first]] = scores[first]
    return out.astype(np.float32)


def pair_progress(progress: Progress | None, n_pairs: int, n_passages: int) -> Progress | None:
    """``progress`` counted in pairs, for a caller that scores ``n_passages`` passages of ``n_pairs`` pairs."""
    if progress is None:
        return None
    done = [0, 0]  # passages scored, pairs reported

    def advance(passages: int) -> None:
        done[0] += passages
        pairs = done[0] * n_pairs // max(1, n_passages)
        if pairs > done[1]:
            progress(pairs - done[1])
            done[1] = pairs

    return advance


def score_passages(score: Callable[[Sequence[str], Sequence[str], Progress | None], np.ndarray], tokenizer: Any,
                   queries: Sequence[str], docs: Sequence[str], config: PassageConfig, *,
                   progress: Progress | None = None, lock: AbstractContextManager[Any] | None = None) -> np.ndarray:
    """The pairs' scores under a resolved ``config``: their passages scored in one ``score(queries, texts,
    progress)`` call, so that they share its batches. ``lock`` is held while tokenizing (a fast
    tokenizer refuses concurrent calls)."""
    with lock or nullcontext():
        passages = split_passages(tokenizer, queries, docs, config)
    scores = score(passages.queries, passages.texts, pair_progress(progress, len(queries), len(passages.texts)))
    return combine(np.asarray(scores, dtype=np.float64), passages.owner, len(queries), config.mode)
