"""Long documents scored by passages (FirstP, MaxP, SumP): teachers/passages.py and the cross-encoder teacher."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tiny

from distill.core.errors import CacheMismatchError, ConfigError
from distill.data.beir import load_beir
from teachers import base
from teachers.cross_encoder import CrossEncoderTeacher
from teachers.loading import load_teacher, teacher_from_fingerprint
from teachers.passages import PassageConfig, pair_progress, split_passages, window_starts
from teachers.scoring import TeacherScoringConfig


def long_pairs(n: int = 6, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short queries and documents of 40 to 90 words (one token each), plus a short and an empty document."""
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(tiny.WORDS, k=3)) for _ in range(n + 2)]
    docs = [" ".join(rng.choices(tiny.WORDS, k=rng.randint(40, 90))) for _ in range(n)] + ["apple pear", ""]
    return queries, docs


def teacher(model, passages: PassageConfig | None = None, max_length: int = 64) -> CrossEncoderTeacher:
    return CrossEncoderTeacher(model, max_length=max_length, dtype="fp32", passages=passages)


def by_pair(scores: np.ndarray, owner: np.ndarray, n: int) -> list[np.ndarray]:
    return [scores[owner == i] for i in range(n)]


@pytest.mark.parametrize("mode, combine", [("max", np.max), ("sum", np.sum)])
def test_maxp_and_sump_combine_each_passage_scored_as_a_document(tiny_cross_encoder, monkeypatch, mode, combine):
    queries, docs = long_pairs()
    plain, split = teacher(tiny_cross_encoder), teacher(tiny_cross_encoder, PassageConfig(mode, 24, 12))
    passages = split_passages(plain.tokenizer, queries, docs, split.passages)
    assert np.bincount(passages.owner).tolist()[:6] == [-(-(len(d.split()) - 24) // 12) + 1 for d in docs[:6]]
    alone = plain.score(passages.queries, passages.texts)

    batches = []
    score_batches = base.score_batches
    monkeypatch.setattr(base, "score_batches", lambda *a, **k: batches.append(1) or score_batches(*a, **k))
    scores = split.score(queries, docs)
    expected = [combine(s) for s in by_pair(alone, passages.owner, len(docs))]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert batches == [1]  # every passage of every document in one token-budget batching
    np.testing.assert_allclose(scores[-2:], plain.score(queries[-2:], docs[-2:]), atol=1e-5)  # one passage each


def test_firstp_with_the_window_of_max_length_is_truncation(tiny_cross_encoder):
    queries, docs = long_pairs()
    plain, first = teacher(tiny_cross_encoder, max_length=32), teacher(tiny_cross_encoder, PassageConfig("first"), 32)
    assert first.passages == PassageConfig("first", 32, 16)  # the defaults: the window is max_length
    passages = split_passages(first.tokenizer, queries, docs, first.passages)
    assert passages.owner.tolist() == list(range(len(docs)))
    assert all(len(t.split()) == 32 for t in passages.texts[:6])  # the documents were longer
    assert first._encode(queries, passages.texts) == plain._encode(queries, docs)  # the very same token ids
    np.testing.assert_allclose(first.score(queries, docs), plain.score(queries, docs), atol=1e-6)


def test_the_fingerprint_records_passages_and_a_cache_keeps_them_apart(tiny_cross_encoder, tiny_beir, tmp_path):
    from distill.cache.store import CachedRanker
    from distill.data.bm25 import bm25_run
    from teachers import score_teacher

    plain = teacher(tiny_cross_encoder).fingerprint()
    maxp = teacher(tiny_cross_encoder, PassageConfig("max", 16)).fingerprint()
    assert "passages" not in plain and maxp["passages"] == {"mode": "max", "tokens": 16, "stride": 8}
    assert {k: v for k, v in maxp.items() if k != "passages"} == plain
    assert teacher(tiny_cross_encoder, PassageConfig("sum", 16)).fingerprint() != maxp
    assert teacher(tiny_cross_encoder, PassageConfig("max", 16, 16)).fingerprint() != maxp
    again = teacher_from_fingerprint(maxp)  # a resumed run, a Ray worker
    assert again.passages == PassageConfig("max", 16, 8) and again.fingerprint() == maxp

    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 5)
    options = TeacherScoringConfig(dtype="fp32", max_length=64, passages="max", passage_tokens=16).teacher_options()
    result = score_teacher(str(tiny_cross_encoder), dataset, run, tmp_path / "cache", show_progress=False, **options)
    assert result.fingerprint == maxp
    live = CachedRanker(tmp_path / "cache").live()  # what evaluate --latency times
    assert live.passages == PassageConfig("max", 16, 8) and live.fingerprint() == maxp
    with pytest.raises(CacheMismatchError, match="passages"):
        score_teacher(str(tiny_cross_encoder), dataset, run, tmp_path / "cache", show_progress=False,
                      **TeacherScoringConfig(dtype="fp32", max_length=64).teacher_options())


@pytest.mark.parametrize("options, field", [
    ({"mode": "avg"}, "passages"),
    ({"mode": "max", "tokens": 7}, "passage_tokens"),
    ({"mode": "max", "tokens": 16, "stride": 17}, "passage_stride"),
    ({"mode": "max", "tokens": 16, "stride": 0}, "passage_stride"),
    ({"mode": None, "tokens": 16, "stride": None}, "passage_tokens"),
    ({"mode": None, "tokens": None, "stride": 8}, "passage_stride"),
])
def test_bad_passage_options_name_their_field(options, field):
    with pytest.raises(ConfigError) as error:
        PassageConfig.from_options(options["mode"], options.get("tokens"), options.get("stride"))
    assert error.value.field == field


def test_passages_must_fit_max_length_and_the_default_scores_as_before(tiny_cross_encoder):
    with pytest.raises(ConfigError) as error:
        teacher(tiny_cross_encoder, PassageConfig("max", 65), max_length=64)
    assert error.value.field == "passage_tokens"
    assert TeacherScoringConfig().teacher_options()["passages"] is None
    assert PassageConfig.from_options(None, None, None) is None


def test_a_generative_teacher_refuses_passages(tiny_causal_lm):
    options = TeacherScoringConfig(kind="generative", passages="max").teacher_options()
    with pytest.raises(ConfigError) as error:
        load_teacher(tiny_causal_lm, **{k: v for k, v in options.items() if v is not None})
    assert error.value.field == "passages"


def test_windows_reach_the_end_and_progress_counts_pairs():
    assert window_starts(300, 128, 64) == [0, 64, 128, 192]
    assert window_starts(256, 128, 128) == [0, 128]
    assert window_starts(5, 128, 64) == [0]
    reported: list[int] = []
    advance = pair_progress(reported.append, 10, 37)
    for n in (5, 11, 1, 20):
        advance(n)
    assert sum(reported) == 10 and all(n > 0 for n in reported)
