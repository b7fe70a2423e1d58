from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import distill.data.synthetic as synthetic
from distill.core.errors import ConfigError
from distill.data.beir import load_beir
from distill.data.synthetic import make_synthetic_beir

SMALL = {"n_topics": 6, "docs_per_topic": 4, "queries_per_topic": 3}
DATA_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv", "SOURCE.md")


def _bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in DATA_FILES}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _bytes(make_synthetic_beir(tmp_path / "a", **SMALL, seed=3))
    b = _bytes(make_synthetic_beir(tmp_path / "b", **SMALL, seed=3))
    c = _bytes(make_synthetic_beir(tmp_path / "c", **SMALL, seed=4))
    assert a == b
    assert a["corpus.jsonl"] != c["corpus.jsonl"]
    assert a["queries.jsonl"] != c["queries.jsonl"]


def test_loads_with_sizes_from_the_parameters(tmp_path):
    out = make_synthetic_beir(tmp_path / "syn", n_topics=5, docs_per_topic=7, queries_per_topic=6, seed=1)
    train, test = load_beir(out, "train"), load_beir(out, "test")
    assert train.corpus.height == 5 * 7
    assert train.queries.height + test.queries.height == 5 * 6
    assert test.queries.height == 5 * 6 // 3
    # every query is judged against exactly its topic's documents
    for split in (train, test):
        per_query = split.qrels.group_by("qid").len()
        assert per_query["len"].to_list() == [7] * split.queries.height
    assert (out / "distill.json").is_file()


def test_splits_are_disjoint_by_query(tmp_path):
    out = make_synthetic_beir(tmp_path / "syn", **SMALL)
    train, test = load_beir(out, "train"), load_beir(out, "test")
    assert set(train.queries["qid"]).isdisjoint(test.queries["qid"])
    assert set(train.qrels["qid"]).isdisjoint(test.qrels["qid"])


def test_graded_labels_one_answer_per_query(tmp_path):
    out = make_synthetic_beir(tmp_path / "syn", **SMALL)
    qrels = load_beir(out).qrels
    assert set(qrels["relevance"].unique()) == {1, 2}
    # docs_per_topic (4) < facets, so each facet has one document: one grade-2 answer per query
    answers = qrels.filter(pl.col("relevance") == 2).group_by("qid").len()
    assert answers.height == SMALL["n_topics"] * SMALL["queries_per_topic"]
    assert set(answers["len"]) == {1}


def test_more_documents_than_facets_gives_several_answers(tmp_path):
    n_facets = len(synthetic.FACETS)
    out = make_synthetic_beir(tmp_path / "syn", n_topics=2, docs_per_topic=n_facets + 2, queries_per_topic=3)
    answers = load_beir(out).qrels.filter(pl.col("relevance") == 2).group_by("qid").len()
    # queries 0 and 1 of a topic target the facets that got a second document
    assert 2 in set(answers["len"])


def test_every_judged_id_exists(tmp_path):
    out = make_synthetic_beir(tmp_path / "syn", **SMALL)
    docids = {json.loads(line)["_id"] for line in (out / "corpus.jsonl").read_text().splitlines()}
    qids = {json.loads(line)["_id"] for line in (out / "queries.jsonl").read_text().splitlines()}
    for split in ("train", "test"):
        rows = [line.split("\t") for line in (out / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]]
        assert rows
        assert {q for q, _, _ in rows} <= qids
        assert {d for _, d, _ in rows} <= docids


def test_texts_are_short_and_source_is_documented(tmp_path):
    out = make_synthetic_beir(tmp_path / "syn", seed=7)
    dataset = load_beir(out)
    doc_words = [len(t.split()) for t in dataset.doc_texts(dataset.corpus["docid"])]
    query_words = [len(t.split()) for t in dataset.queries["text"]]
    assert 25 <= min(doc_words) and max(doc_words) <= 90
    assert 3 <= min(query_words) and max(query_words) <= 15
    assert dataset.queries["text"].n_unique() == dataset.queries.height
    source = (out / "SOURCE.md").read_text()
    assert "distill" in source and "seed: 7" in source and "n_topics: 40" in source


def test_bm25_is_useful_but_imperfect(tmp_path):
    from distill.data.bm25 import bm25_run
    from distill.evaluation.metrics import metric_means

    dataset = load_beir(make_synthetic_beir(tmp_path / "syn"), "test")
    ndcg = metric_means(dataset.qrels, bm25_run(dataset, 100), ["nDCG@10"])["nDCG@10"]
    assert 0.35 < ndcg < 0.75


def test_folder_appears_only_complete(tmp_path, monkeypatch):
    out = tmp_path / "syn"
    make_synthetic_beir(out, **SMALL, seed=0)
    make_synthetic_beir(out, **SMALL, seed=1)  # replaces the old folder whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]
    assert "seed: 1" in (out / "SOURCE.md").read_text()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "write_manifest", fail)
    with pytest.raises(RuntimeError):
        make_synthetic_beir(tmp_path / "broken", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]
    assert "seed: 1" in (out / "SOURCE.md").read_text()


@pytest.mark.parametrize("bad", [{"n_topics": 0}, {"n_topics": 10_000}, {"docs_per_topic": 0},
                                 {"queries_per_topic": 0}, {"n_topics": 1, "queries_per_topic": 2}])
def test_bad_sizes_are_config_errors(tmp_path, bad):
    with pytest.raises(ConfigError):
        make_synthetic_beir(tmp_path / "syn", **bad)
    assert not (tmp_path / "syn").exists()
