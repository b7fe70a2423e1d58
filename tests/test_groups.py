"""Training groups from teacher scores: positives, negatives, the false-negative guard, padding."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from distill.core.errors import ConfigError, InputError
from distill.core.schema import CORPUS_SCHEMA, QRELS_SCHEMA, QUERIES_SCHEMA, SCORES_SCHEMA
from distill.data.beir import Dataset
from distill.training.groups import GroupConfig, build_groups, groups_to_hf_dataset, holdout, split_groups


def make_dataset(n_docs: int = 20) -> Dataset:
    docids = [f"d{i}" for i in range(n_docs)]
    corpus = pl.DataFrame({"docid": docids, "title": [""] * n_docs, "text": [f"text of {d}" for d in docids]},
                          schema=CORPUS_SCHEMA)
    queries = pl.DataFrame({"qid": ["q1", "q2"], "text": ["first query", "second query"]}, schema=QUERIES_SCHEMA)
    # q1: d2 is the best judged document (grade 2), d5 also relevant, d7 judged non-relevant; q2: none relevant
    qrels = pl.DataFrame({"qid": ["q1", "q1", "q1", "q2"], "docid": ["d2", "d5", "d7", "d1"],
                          "relevance": [2, 1, 0, 0]}, schema=QRELS_SCHEMA)
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name="hand", split="train")


def scores_frame(rows: dict[str, dict[str, float]]) -> pl.DataFrame:
    flat = [(q, d, s) for q, docs in rows.items() for d, s in docs.items()]
    return pl.DataFrame(flat, schema=SCORES_SCHEMA, orient="row")


# q1's judged positive d2 is not the teacher's top-1 (d0 is)
SCORES = scores_frame({
    "q1": {"d0": 9.0, "d1": 8.0, "d2": 5.0, "d3": 4.8, "d4": 3.0, "d5": 7.0, "d6": 1.0, "d7": 0.5},
    "q2": {"d1": 2.0, "d3": 6.0, "d4": 4.0, "d8": -1.0},
})


def by_qid(groups):
    return {g.qid: g for g in groups}


def test_sampled_puts_the_judged_positive_first_and_never_samples_judged_positives():
    groups = by_qid(build_groups(make_dataset(), SCORES, GroupConfig(n_negatives=3, seed=1)))
    q1 = groups["q1"]
    assert q1.docids[0] == "d2" and q1.labels[0] == 2 and q1.teacher[0] == 5.0
    assert len(q1) == 4
    assert "d5" not in q1.docids[1:]  # relevant (grade 1): not a negative
    assert all(label <= 0 for label in q1.labels[1:])
    assert q1.docs[0] == "text of d2" and q1.query == "first query"
    # q2 has no judged positive among its candidates: the teacher's top-1 is its positive
    assert groups["q2"].docids[0] == "d3"


def test_teacher_positive_source_takes_the_teachers_top1():
    groups = by_qid(build_groups(make_dataset(), SCORES, GroupConfig(n_negatives=2, positive_source="teacher")))
    assert groups["q1"].docids[0] == "d0"
    assert groups["q1"].labels[0] == 0


def test_false_negative_guard_drops_negatives_scored_near_or_above_the_positive():
    config = GroupConfig(n_negatives=10, false_negative_margin=0.5)
    q1 = by_qid(build_groups(make_dataset(), SCORES, config))["q1"]
    # positive d2 scores 5.0: d0 (9), d1 (8) are above and d3 (4.8) is within 0.5; d5 is judged relevant
    assert q1.docids[0] == "d2"
    assert sorted(q1.docids[1:]) == ["d4", "d6", "d7"]
    without = by_qid(build_groups(make_dataset(), SCORES, GroupConfig(n_negatives=10)))["q1"]
    assert sorted(without.docids[1:]) == ["d0", "d1", "d3", "d4", "d6", "d7"]


def test_listwise_takes_the_teachers_top_k_best_first():
    groups = by_qid(build_groups(make_dataset(), SCORES, GroupConfig(mode="listwise", listwise_k=3)))
    assert groups["q1"].docids == ["d0", "d1", "d5"]
    assert groups["q1"].teacher == [9.0, 8.0, 7.0]
    assert groups["q1"].labels == [0, 0, 1]
    assert groups["q2"].docids == ["d3", "d4", "d1"]


def test_sampling_is_deterministic_per_seed_and_independent_of_row_order():
    docs = {f"d{i}": float(i) for i in range(20)}
    scores = scores_frame({"q1": docs, "q2": docs})
    first = build_groups(make_dataset(), scores, GroupConfig(n_negatives=4, seed=7))
    again = build_groups(make_dataset(), scores.reverse(), GroupConfig(n_negatives=4, seed=7))
    other = build_groups(make_dataset(), scores, GroupConfig(n_negatives=4, seed=8))
    assert [g.docids for g in first] == [g.docids for g in again]
    assert [g.docids for g in first] != [g.docids for g in other]


def test_groups_too_small_for_the_loss_are_dropped_then_refused(caplog):
    from distill.training.losses import build_loss

    check = build_loss("MarginMSE").check_group_size
    one_each = scores_frame({"q1": {"d2": 1.0}, "q2": {"d3": 1.0}})
    with pytest.raises(ConfigError, match=r"MarginMSE.*has 1 candidate\(s\) per query"):
        build_groups(make_dataset(), one_each, GroupConfig(), check_group_size=check)
    mixed = scores_frame({"q1": {"d2": 1.0, "d3": 0.0}, "q2": {"d3": 1.0}})
    with caplog.at_level(logging.WARNING, logger="distill.training.groups"):
        groups = build_groups(make_dataset(), mixed, GroupConfig(), check_group_size=check)
    assert [g.qid for g in groups] == ["q1"]
    assert "dropped 1 of 2 queries" in caplog.text


def test_bad_scores_are_refused():
    duplicated = pl.concat([SCORES, SCORES.head(1)])
    with pytest.raises(InputError, match="more than once"):
        build_groups(make_dataset(), duplicated, GroupConfig())
    with pytest.raises(ConfigError, match="none of the 1 queries"):
        build_groups(make_dataset(), scores_frame({"q9": {"d1": 1.0}}), GroupConfig())
    with pytest.raises(InputError, match="not finite"):
        build_groups(make_dataset(), scores_frame({"q1": {"d1": float("nan")}}), GroupConfig())


def test_hf_dataset_pads_shorter_groups_and_marks_them_in_the_mask():
    short = scores_frame({"q1": {"d0": 1.0, "d1": 2.0}, "q2": {"d1": 3.0}})
    groups = build_groups(make_dataset(), short, GroupConfig(mode="listwise", listwise_k=6))
    hf = groups_to_hf_dataset(groups)
    assert hf.column_names == ["query", "doc_0", "doc_1", "label"]
    row = hf[1]  # q2: one document, padded to two
    assert row["doc_1"] == ""
    assert row["label"] == [[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert hf[0]["label"][0] == [2.0, 1.0]


def test_holdout_is_seeded_and_disjoint():
    ids = [f"q{i}" for i in range(50)]
    held = holdout(ids, 0.2, seed=3)
    assert len(held) == 10 and held == holdout(list(reversed(ids)), 0.2, seed=3)
    groups = build_groups(make_dataset(), SCORES, GroupConfig(n_negatives=1))
    train, valid = split_groups(groups, 0.5, seed=0)
    assert len(train) == len(valid) == 1 and train[0].qid != valid[0].qid
    with pytest.raises(ConfigError):
        holdout(ids, 1.0, seed=0)
