"""Token-budget batching shared by every teacher.

Pairs are tokenized once, sorted by token length (longest first, so an out-of-memory error
shows on the first batch) and grouped so that each padded batch, rows x longest row, stays
within ``max_tokens``. Sorting by tokens rather than characters (as sentence-transformers
does) leaves almost no padding, and a budget in tokens rather than rows keeps batches of
short pairs large and batches of long pairs within memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Padded tokens per batch by device type. On 2 idle AVX-512 cores, MiniLM-L6 reranking 100
# SciFact candidates (max_length 512) took 6.9 s per query at 4096 tokens against 8.4 s at
# 16384 in fp32, and 4.7 against 5.6 s in bf16 (a 2-layer student at 128 tokens: 1.33x in
# fp32): a batch whose activations stay in cache beats fewer thread synchronisations
# (scripts/bench_batch_tokens.py, docs/results/batch_tokens.md). An earlier 2-core
# measurement had favoured 16384 while other jobs shared the cores.
DEFAULT_MAX_TOKENS = {"cuda": 32768, "mps": 8192, "cpu": 4096}


def default_max_tokens(device: torch.device) -> int:
    return DEFAULT_MAX_TOKENS.get(device.type, DEFAULT_MAX_TOKENS["cpu"])


def token_batches(lengths: np.ndarray, max_tokens: int) -> Iterator[np.ndarray]:
    """Indices into ``lengths``, longest first, in batches of at most ``max_tokens`` padded tokens.

    A sequence longer than ``max_tokens`` forms a batch of its own.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        size = max(1, max_tokens // max(1, int(lengths[order[start]])))
        yield order[start:start + size]
        start += size


def pad_batch(
    features: dict[str, list[list[int]]], index: np.ndarray, pad_id: int, padding_side: str = "right"
) -> dict[str, np.ndarray]:
    """The rows ``index`` of token-level ``features`` as padded int64 arrays plus ``attention_mask``.

    ``input_ids`` are padded with ``pad_id``, every other feature with 0.
    """
    ids = features["input_ids"]
    lengths = [len(ids[i]) for i in index]
    width = max(lengths)
    out = {name: np.full((len(index), width), pad_id if name == "input_ids" else 0, dtype=np.int64)
           for name in features}
    out["attention_mask"] = np.zeros((len(index), width), dtype=np.int64)
    for row, (i, n) in enumerate(zip(index, lengths)):
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        for name, values in features.items():
            out[name][row, cols] = values[i]
        out["attention_mask"][row, cols] = 1
    return out


def score_batches(
    features: dict[str, list[list[int]]],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    device: torch.device,
    max_tokens: int,
    pad_id: int,
    padding_side: str = "right",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run ``forward`` (padded batch -> one float score per row) over all rows; scores in input order."""
    import torch

    lengths = np.fromiter((len(row) for row in features["input_ids"]), dtype=np.int64)
    scores = np.empty(len(lengths), dtype=np.float32)
    with torch.inference_mode():
        for index in token_batches(lengths, max_tokens):
            batch = pad_batch(features, index, pad_id, padding_side)
            tensors = {name: torch.from_numpy(array).to(device) for name, array in batch.items()}
            scores[index] = forward(tensors).float().cpu().numpy()
            if progress is not None:
                progress(len(index))
    return scores
