"""Long documents scored by passages (FirstP, MaxP, SumP): distill/inference/passages.py, the cross-encoder teacher,
the cross-encoder student trained from such a cache and the cascade's deadline planner."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tiny

from distill.core.errors import CacheMismatchError, ConfigError
from distill.core.io import read_json
from distill.data.beir import load_beir
from distill.inference.passages import PassageConfig, pair_progress, passages_for, split_passages, window_starts
from teachers import base
from teachers.cross_encoder import CrossEncoderTeacher
from teachers.loading import load_teacher, teacher_from_fingerprint
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
    assert np.bincount(passages.owner).tolist() == passages_for([len(d.split()) for d in docs], split.passages).tolist()
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
    assert window_starts(300, PassageConfig("max", 128, 64)) == [0, 64, 128, 192]
    assert window_starts(256, PassageConfig("sum", 128, 128)) == [0, 128]
    assert window_starts(5, PassageConfig("max", 128, 64)) == [0]
    assert window_starts(300, PassageConfig("first", 128, 64)) == [0]
    reported: list[int] = []
    advance = pair_progress(reported.append, 10, 37)
    for n in (5, 11, 1, 20):
        advance(n)
    assert sum(reported) == 10 and all(n > 0 for n in reported)


def test_the_module_lives_in_the_inference_layer_and_imports_no_model_library():
    import subprocess
    import sys

    import distill.inference.passages as moved
    import teachers.cross_encoder

    assert teachers.cross_encoder.PassageConfig is moved.PassageConfig  # the teacher's, not a copy
    code = ("import sys, distill.inference.passages, distill.inference.lengths; "
            "print(sorted(m for m in ('torch', 'transformers', 'teachers', 'students') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_student_keeps_its_teachers_window_cut_to_its_own_max_length():
    from distill.training.config import TrainConfig
    from students.cross_encoder import CrossEncoderStudent

    student = CrossEncoderStudent(train_config=TrainConfig(max_length=32))
    maxp = {"mode": "max", "tokens": 64, "stride": 48}
    assert student.scoring_manifest({"passages": maxp}) == {"passages": {"mode": "max", "tokens": 32, "stride": 32}}
    assert student.scoring_manifest({"passages": {**maxp, "tokens": 24, "stride": 12}})["passages"] == {
        "mode": "max", "tokens": 24, "stride": 12}
    assert student.scoring_manifest({"kind": "cross-encoder"}) == {} and student.scoring_manifest(None) == {}


def test_a_student_trained_from_a_maxp_cache_scores_a_long_document_by_its_best_passage(
        tiny_cross_encoder, tiny_beir, tmp_path, capsys):
    from tiny import run_cli

    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run
    from distill.inference.lengths import passage_config
    from distill.rankers.loading import load_ranker
    from students.cross_encoder import CrossEncoderStudentRanker

    write_run(bm25_run(load_beir(tiny_beir, "train"), 5), tmp_path / "train5.trec")
    code, _, err = run_cli(["score-teacher", "--teacher", tiny_cross_encoder, "--data", tiny_beir, "--split", "train",
                            "--run", tmp_path / "train5.trec", "--cache", tmp_path / "cache", "--dtype", "fp32",
                            "--max-length", "64", "--no-sanity-check", "--passages", "max", "--passage-tokens", "16"],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["train-student", "--student", "cross-encoder", "--cache", tmp_path / "cache",
                            "--data", tiny_beir, "--split", "train", "--epochs", "1", "--max-length", "64",
                            "--batch-size", "8", "--init", tiny_cross_encoder, "--loss", "MarginMSE",
                            "--out", tmp_path / "student"], capsys)
    assert code == 0, err
    maxp = {"mode": "max", "tokens": 16, "stride": 8}
    assert read_json(tmp_path / "student" / "distill.json")["passages"] == maxp

    student = load_ranker(str(tmp_path / "student"))  # as evaluate, cascade build and serve load it
    assert isinstance(student, CrossEncoderStudentRanker) and passage_config(student) == PassageConfig(**maxp)
    assert student.fingerprint()["passages"] == maxp
    queries, docs = long_pairs(2, seed=1)
    plain = CrossEncoderTeacher(tmp_path / "student", dtype="fp32")  # the same model, truncating
    passages = split_passages(plain.tokenizer, queries, docs, student.passages)
    assert np.bincount(passages.owner)[0] > 1  # long documents: several passages each
    alone = plain.score(passages.queries, passages.texts)
    expected = [s.max() for s in by_pair(alone, passages.owner, len(docs))]
    np.testing.assert_allclose(student.score(queries, docs), expected, rtol=1e-5, atol=1e-5)

    # an exported graph scores a pair's first window only: export refuses rather than truncating silently
    code, _, err = run_cli(["export", tmp_path / "student", "--data", tiny_beir, "--out", tmp_path / "onnx"], capsys)
    assert code == 2 and "passages" in err and not (tmp_path / "onnx").exists()


def test_the_deadline_planner_counts_a_passage_stage_by_its_passages():
    from distill.cascade.model import StageCost, stage
    from distill.inference.lengths import REFERENCE_TOKENS, pair_weights
    from distill.rankers.base import BaseRanker
    from distill.rankers.loading import RunRanker

    class Windowed(BaseRanker):
        """A cross-encoder's shape: it truncates pairs to 128 tokens and, given ``passages``, scores by them."""

        max_length = 128

        def __init__(self, name: str, passages: PassageConfig | None) -> None:
            self.name, self.passages = name, passages

        def rerank(self, dataset, run):
            raise AssertionError("only planned here, never run")

        def score_documents(self, query, docs):
            raise AssertionError("only planned here, never run")

        def get_config_dict(self) -> dict:
            return {"passages": self.passages}

    maxp = PassageConfig("max", 128, 64)
    cascade = (stage("bm25", RunRanker(), "bm25") >> stage("trunc", Windowed("trunc", None))
               >> stage("maxp", Windowed("maxp", maxp)))
    cascade.costs = {"bm25": StageCost(), "trunc": StageCost(0.0, 1000.0), "maxp": StageCost(0.0, 1000.0)}
    tokens = np.array([100, 300, 1000, 4000])
    counts = passages_for(tokens, maxp)
    assert counts.tolist() == [1, 4, 15, 62]
    for n_tokens, n_passages in zip(tokens.tolist(), counts.tolist()):
        _, trunc, by_passages = cascade.estimate_ms([4 * n_tokens])  # characters: four per token
        assert trunc == pytest.approx(1000.0 * max(1.0, min(n_tokens, 128) / REFERENCE_TOKENS))
        assert by_passages == pytest.approx(1000.0 * n_passages)  # windows of 128 tokens weigh 1 each
    wide = PassageConfig("max", 512, 256)  # windows longer than the reference pair weigh more each
    assert pair_weights([4 * 1000], passages=wide).tolist() == [passages_for(1000, wide) * 512 / REFERENCE_TOKENS]
    assert pair_weights([4 * 1000], passages=PassageConfig("first", 128, 64)).tolist() == [1.0]
