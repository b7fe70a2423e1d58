"""A teacher cache that does not lie: concurrent writers, edited texts (issue 32); torn files are tested in
tests/test_cache_torn.py."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace

import polars as pl
import pytest
from test_cache import FakeTeacher, new_cache
from tiny import run_cli

from distill.cache.scoring import score_into_cache
from distill.cache.store import TeacherCache, merge_caches, read_scores
from distill.core.errors import CacheMismatchError
from distill.core.manifest import frame_hash
from distill.data.beir import load_beir
from distill.data.bm25 import bm25_run


@pytest.fixture(scope="module")
def data(tiny_beir):
    dataset = load_beir(tiny_beir, "train")
    return dataset, bm25_run(dataset, 10)


def _scored(path, dataset, run, flush_pairs=1024):
    """A cache of ``run`` scored by a FakeTeacher, compacted into one shard."""
    teacher = FakeTeacher()
    score_into_cache(teacher, dataset, run, new_cache(path, dataset, teacher), flush_pairs=flush_pairs,
                     show_progress=False)
    return teacher


def _shards(tmp_path, dataset, run):
    """A cache of three 16-pair shards (a run killed after its third batch)."""
    crashing = FakeTeacher(fail_after_calls=3)
    with pytest.raises(RuntimeError):
        score_into_cache(crashing, dataset, run, new_cache(tmp_path / "c", dataset, crashing), flush_pairs=16,
                         show_progress=False)
    return TeacherCache.open(tmp_path / "c").shard_paths()


def _in_threads(*calls):
    """Run the calls at once in threads (released together by a barrier); their exceptions, in order."""
    barrier = threading.Barrier(len(calls))
    errors = [None] * len(calls)

    def body(i, call):
        barrier.wait()
        try:
            call()
        except Exception as err:  # noqa: BLE001 - reported to the test
            errors[i] = err

    threads = [threading.Thread(target=body, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# -- two writers on one cache ---------------------------------------------------------------------

def test_a_writer_with_a_stale_manifest_keeps_the_others_registration(tmp_path, data):
    dataset, run = data
    _scored(tmp_path / "c", dataset, run.head(4))
    qids = sorted(run["qid"].unique())
    a, b = (TeacherCache.create_or_open(tmp_path / "c", FakeTeacher().fingerprint(), frame_hash(dataset.corpus))
            for _ in range(2))  # both read the manifest before either registers
    a.register_candidates(run.filter(pl.col("qid") == qids[0]), "a")
    b.register_candidates(run.filter(pl.col("qid") == qids[1]), "b")
    sources = sorted(c["source"] for c in TeacherCache.open(tmp_path / "c").manifest["candidates"])
    assert sources == ["a", "b"]
    registered = run.filter(pl.col("qid").is_in(qids[:2])).height
    assert TeacherCache.open(tmp_path / "c").unscored(qids[:2])[1] == registered


def test_concurrent_registrations_all_survive(tmp_path, data):
    dataset, run = data
    _scored(tmp_path / "c", dataset, run.head(4))
    qids = sorted(run["qid"].unique())[:8]

    def register(part):
        def call():
            for qid in part:
                cache = TeacherCache.create_or_open(tmp_path / "c", FakeTeacher().fingerprint(),
                                                    frame_hash(dataset.corpus))
                cache.register_candidates(run.filter(pl.col("qid") == qid), qid)
        return call

    assert _in_threads(register(qids[::2]), register(qids[1::2])) == [None, None]
    sources = sorted(c["source"] for c in TeacherCache.open(tmp_path / "c").manifest["candidates"])
    assert sources == sorted(qids)


def test_a_second_teacher_on_a_new_folder_is_refused_at_its_first_write(tmp_path, data):
    dataset, run = data
    batch = run.head(6).select("qid", "docid").with_columns(score=pl.lit(1.0))
    first = TeacherCache.create_or_open(tmp_path / "c", FakeTeacher("a").fingerprint(), frame_hash(dataset.corpus))
    second = TeacherCache.create_or_open(tmp_path / "c", FakeTeacher("b").fingerprint(), frame_hash(dataset.corpus))
    first.append(batch)
    with pytest.raises(CacheMismatchError, match="another teacher"):
        second.append(batch.with_columns(score=pl.lit(2.0)))
    scores, manifest = read_scores(tmp_path / "c")
    assert manifest["teacher"]["model"] == "a" and scores["score"].to_list() == [1.0] * 6


def test_racing_teachers_one_wins_one_is_refused(tmp_path, data):
    dataset, run = data
    batch = run.head(6).select("qid", "docid").with_columns(score=pl.lit(1.0))
    caches = [TeacherCache.create_or_open(tmp_path / "c", FakeTeacher(n).fingerprint(), frame_hash(dataset.corpus))
              for n in ("a", "b")]
    errors = _in_threads(*(lambda c=c: c.append(batch) for c in caches))
    assert sorted(type(e).__name__ for e in errors if e is not None) == ["CacheMismatchError"]
    assert errors.count(None) == 1
    winner = caches[errors.index(None)].manifest["teacher"]
    assert TeacherCache.open(tmp_path / "c").manifest["teacher"] == winner


def test_two_compactions_at_once_both_succeed(tmp_path, data):
    dataset, run = data
    crashing = FakeTeacher(fail_after_calls=20)
    with pytest.raises(RuntimeError):
        score_into_cache(crashing, dataset, run, new_cache(tmp_path / "c", dataset, crashing), flush_pairs=4,
                         show_progress=False)
    before = TeacherCache.open(tmp_path / "c")
    assert len(before.shard_paths()) == 20
    expected = before.scores().sort("qid", "docid")
    caches = [TeacherCache.open(tmp_path / "c") for _ in range(2)]
    assert _in_threads(*(c.compact for c in caches)) == [None, None]
    after = TeacherCache.open(tmp_path / "c")
    assert len(after.shard_paths()) == 1 and after.scores().sort("qid", "docid").equals(expected)


def test_a_reader_lists_the_shards_again_when_a_compaction_folds_them_away(tmp_path, data, monkeypatch):
    from distill.cache import reading

    dataset, run = data
    shards = _shards(tmp_path, dataset, run)
    expected = TeacherCache.open(tmp_path / "c").scores().sort("qid", "docid")
    reader, batches = TeacherCache.open(tmp_path / "c"), reading.batches
    compactions = []

    def read_after_a_compaction(path):
        if not compactions:  # another process compacts between the reader's listing and its reading
            compactions.append(path)
            TeacherCache.open(tmp_path / "c").compact()
        return batches(path)

    monkeypatch.setattr(reading, "batches", read_after_a_compaction)
    assert reader.scores().sort("qid", "docid").equals(expected)
    assert compactions and not any(p.exists() for p in shards)


def test_merge_refuses_caches_scored_from_other_texts(tmp_path, data):
    dataset, run = data
    _scored(tmp_path / "a", dataset, run)
    edited = _edit_query(dataset, run["qid"][0], "another text")
    teacher = FakeTeacher()
    score_into_cache(teacher, edited, run, new_cache(tmp_path / "b", edited, teacher), show_progress=False)
    with pytest.raises(CacheMismatchError, match="other texts"):
        merge_caches(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "m").exists()


def test_stale_temporary_files_of_a_killed_writer_go_with_the_next_write(tmp_path, data):
    dataset, run = data
    _scored(tmp_path / "c", dataset, run.head(4))
    stale = [tmp_path / "c" / "shards" / ".part-x.parquet.abc123.tmp", tmp_path / "c" / ".manifest.json.q1.tmp"]
    for path in stale:
        path.write_bytes(b"half")
        os.utime(path, (1_000_000_000, 1_000_000_000))
    TeacherCache.open(tmp_path / "c").scores()  # a reader leaves them
    assert all(p.exists() for p in stale)
    _scored(tmp_path / "c", dataset, run.head(8))  # a writer removes them
    assert not any(p.exists() for p in stale)


def test_a_refused_run_leaves_no_folder_and_no_lock(tmp_path, data):
    dataset, run = data
    cache = new_cache(tmp_path / "c", dataset, FakeTeacher())
    cache.register_candidates(run, "bm25")
    assert not (tmp_path / "c").exists()


# -- edited texts ---------------------------------------------------------------------------------

def _edit_query(dataset, qid, text):
    queries = dataset.queries.with_columns(pl.when(pl.col("qid") == qid).then(pl.lit(text))
                                           .otherwise(pl.col("text")).alias("text"))
    return replace(dataset, queries=queries)


def test_an_edited_query_is_scored_again(tmp_path, data, caplog):
    dataset, run = data
    _scored(tmp_path / "c", dataset, run)
    qid = run["qid"][0]
    edited = _edit_query(dataset, qid, "an entirely different question")
    teacher = FakeTeacher()
    with caplog.at_level(logging.WARNING):
        stats = score_into_cache(teacher, edited, run, new_cache(tmp_path / "c", edited, teacher), show_progress=False)
    n = run.filter(pl.col("qid") == qid).height
    assert stats.scored == teacher.pairs == n
    assert "1 query" in caplog.text and "scored again" in caplog.text
    scores, _ = read_scores(tmp_path / "c")
    mine = scores.filter(pl.col("qid") == qid).sort("docid")
    fresh = FakeTeacher().score(edited.query_texts(mine["qid"]), edited.doc_texts(mine["docid"]))
    assert mine["score"].to_list() == fresh.tolist() and scores.height == run.height


def test_an_edited_document_is_scored_again_when_no_corpus_hash_pins_it(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher()
    score_into_cache(teacher, dataset, run, TeacherCache.create_or_open(tmp_path / "c", teacher.fingerprint(), None),
                     show_progress=False)
    docid = run["docid"][0]
    corpus = dataset.corpus.with_columns(pl.when(pl.col("docid") == docid).then(pl.lit("rewritten"))
                                         .otherwise(pl.col("text")).alias("text"))
    edited = replace(dataset, corpus=corpus)
    again = FakeTeacher()
    score_into_cache(again, edited, run, TeacherCache.create_or_open(tmp_path / "c", again.fingerprint(), None),
                     show_progress=False)
    assert again.pairs == run.filter(pl.col("docid") == docid).height > 0


def test_an_edited_corpus_is_refused_where_the_corpus_hash_pins_it(tmp_path, data):
    dataset, run = data
    _scored(tmp_path / "c", dataset, run.head(4))
    corpus = dataset.corpus.with_columns(pl.lit("rewritten").alias("text"))
    with pytest.raises(CacheMismatchError, match="another corpus"):
        new_cache(tmp_path / "c", replace(dataset, corpus=corpus), FakeTeacher())


def test_train_student_sees_pairs_with_edited_texts_as_unscored(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    cache.register_candidates(run, "bm25")
    score_into_cache(teacher, dataset, run, cache, show_progress=False)
    qid = run["qid"][0]
    opened = TeacherCache.open(tmp_path / "c")
    assert opened.unscored(dataset.queries["qid"], dataset=dataset) == (0, run.height)
    edited = _edit_query(dataset, qid, "something else")
    n = run.filter(pl.col("qid") == qid).height
    assert opened.unscored(edited.queries["qid"], dataset=edited) == (n, run.height)
    scores, _ = read_scores(tmp_path / "c", dataset=edited)  # what a student may train on
    assert scores.height == run.height - n and qid not in set(scores["qid"])


def test_edited_pseudo_queries_are_scored_again_by_score_teacher(tiny_beir, tiny_cross_encoder, tmp_path, capsys):
    queries = tmp_path / "pseudo.tsv"
    queries.write_text("qid\ttext\ntitle:d0_0\talpha beta\ntitle:d1_0\tgamma delta\n")
    run, cache = tmp_path / "u.trec", tmp_path / "cache"
    assert run_cli(["candidates", "--data", tiny_beir, "--queries", queries, "--k", 5, "--out", run], capsys)[0] == 0
    args = ["score-teacher", "--teacher", tiny_cross_encoder, "--data", tiny_beir, "--queries", queries, "--run", run,
            "--cache", cache, "--dtype", "fp32", "--no-sanity-check"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    before, _ = read_scores(cache)
    queries.write_text("qid\ttext\ntitle:d0_0\tsomething else entirely\ntitle:d1_0\tgamma delta\n")
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "scored again" in err
    after, _ = read_scores(cache)
    changed = before.join(after, on=["qid", "docid"], suffix="_new").filter(pl.col("score") != pl.col("score_new"))
    assert set(changed["qid"]) == {"title:d0_0"} and after.height == before.height


def test_train_student_does_not_learn_scores_of_edited_queries(tiny_beir, tiny_cross_encoder, tmp_path, capsys):
    """`train-student` after a query's text changed (no rescoring): its old scores are left out, with a warning."""
    queries = tmp_path / "pseudo.tsv"
    queries.write_text("qid\ttext\ntitle:d0_0\talpha beta\ntitle:d1_0\tgamma delta\n")
    run, cache = tmp_path / "u.trec", tmp_path / "cache"
    assert run_cli(["candidates", "--data", tiny_beir, "--queries", queries, "--k", 5, "--out", run], capsys)[0] == 0
    code, _, err = run_cli(["score-teacher", "--teacher", tiny_cross_encoder, "--data", tiny_beir, "--queries",
                            queries, "--run", run, "--cache", cache, "--dtype", "fp32", "--no-sanity-check"], capsys)
    assert code == 0, err
    queries.write_text("qid\ttext\ntitle:d0_0\tsomething else entirely\ntitle:d1_0\tgamma delta\n")
    code, _, err = run_cli(["train-student", "--student", "lightgbm", "--cache", cache, "--data", tiny_beir,
                            "--queries", queries, "--out", tmp_path / "lgbm"], capsys)
    assert code == 0, err
    assert "5 of the 10 candidate pairs" in err and "edited" in err


def _format_1(folder, dataset, run):
    """A cache as distill wrote it before it recorded texts: FORMAT 1, shards of qid, docid, score."""
    (folder / "shards").mkdir(parents=True)
    scores = run.select("qid", "docid").with_columns(score=pl.lit(0.5, dtype=pl.Float32))
    scores.write_parquet(folder / "shards" / "part-old.parquet")
    manifest = {"kind": "teacher-cache", "format": 1, "teacher": FakeTeacher().fingerprint(),
                "corpus_hash": frame_hash(dataset.corpus), "candidates": [], "versions": {}, "created": "then"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_1_cache_opens_and_gains_the_texts_with_one_notice(tmp_path, data, caplog):
    dataset, run = data
    _format_1(tmp_path / "c", dataset, run)
    assert read_scores(tmp_path / "c")[0].height == run.height
    teacher = FakeTeacher()
    with caplog.at_level(logging.INFO):
        score_into_cache(teacher, dataset, run, new_cache(tmp_path / "c", dataset, teacher), show_progress=False)
    assert teacher.pairs == 0  # its texts are taken as current
    notices = [r.getMessage() for r in caplog.records if "format 1" in r.getMessage()]
    assert len(notices) == 1 and "taken as" in notices[0]
    assert TeacherCache.open(tmp_path / "c").manifest["format"] == 2
    qid = run["qid"][0]
    edited = _edit_query(dataset, qid, "changed")
    again = FakeTeacher()
    score_into_cache(again, edited, run, new_cache(tmp_path / "c", edited, again), show_progress=False)
    assert again.pairs == run.filter(pl.col("qid") == qid).height
