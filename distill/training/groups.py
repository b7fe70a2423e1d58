"""Training groups: one query with a list of its candidates and their teacher scores.

A group is what a distillation loss sees as one row of ``student[B, L]`` / ``teacher[B, L]``.
Two ways to build it from the teacher cache:

- ``sampled``: the positive in column 0 (the losses' convention, e.g. MarginMSE compares
  column 0 with the others), then up to ``n_negatives`` negatives drawn **uniformly at
  random** from the query's other candidates. The candidates are a first stage's top-k
  (BM25), so they are already hard; we do not additionally prefer the teacher's
  highest-scored non-positives, because those are the likeliest false negatives and
  distillation losses learn from the whole range of teacher scores, not only the top.
- ``listwise``: the teacher's top ``listwise_k`` candidates, best first.

The positive (sampled mode) is, with ``positive_source="qrels"``, the highest-graded judged
document among the query's candidates (ties: higher teacher score), falling back to the
teacher's top-1 when none of the candidates is judged relevant; with
``positive_source="teacher"`` it is always the teacher's top-1 (no labels needed).
The false-negative guard drops a negative whose teacher score is above
``positive score - false_negative_margin``.

Negatives are drawn with a generator seeded by ``(seed, qid)``, so a query's group does not
depend on which other queries are present or in which order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QID, RELEVANCE, SCORE, TEXT, require_columns
from distill.data.beir import Dataset
from distill.data.views import holdout

log = logging.getLogger(__name__)

#: Rows of the ``label`` column written by :func:`groups_to_hf_dataset`: ``label[:, i, :]``.
TEACHER_ROW, RELEVANCE_ROW, MASK_ROW = 0, 1, 2

Mode = Literal["sampled", "listwise"]
PositiveSource = Literal["qrels", "teacher"]


@dataclass
class GroupConfig:
    """How teacher-scored candidates become training groups (see the module docstring).

    A field's metadata holds its ``distill train-student`` help (:mod:`distill.app.options`), and its option's
    name where that is not the field's.
    """

    mode: Mode = field(default="sampled", metadata={
        "help": "Groups: sampled (positive + negatives) | listwise (teacher top-k)."})
    n_negatives: int = field(default=7, metadata={
        "option": "negatives", "min": 0, "help": "Sampled mode: negatives per query."})
    listwise_k: int = field(default=8, metadata={"min": 1, "help": "Listwise mode: the teacher's top k per query."})
    positive_source: PositiveSource = field(default="qrels", metadata={
        "help": "Sampled mode: qrels (teacher top-1 when none) | teacher."})
    false_negative_margin: float | None = field(default=None, metadata={"option": "fn_margin", "help": (
        "Drop negatives scored above the positive minus this margin [none: keep them all].")})
    seed: int = 42  # set by train-student's --seed, TrainConfig's option

    def __post_init__(self) -> None:
        if self.mode not in ("sampled", "listwise"):
            raise ConfigError(f"group mode must be 'sampled' or 'listwise', got {self.mode!r}")
        if self.positive_source not in ("qrels", "teacher"):
            raise ConfigError(f"positive source must be 'qrels' or 'teacher', got {self.positive_source!r}")
        if self.n_negatives < 0:
            raise ConfigError(f"n_negatives must be >= 0, got {self.n_negatives}")
        if self.listwise_k < 1:
            raise ConfigError(f"listwise_k must be >= 1, got {self.listwise_k}")
        if self.false_negative_margin is not None and self.mode != "sampled":
            raise ConfigError("the false-negative margin applies to sampled groups only (--mode sampled)")

    @property
    def group_size(self) -> int:
        """The largest group this config builds."""
        return 1 + self.n_negatives if self.mode == "sampled" else self.listwise_k


@dataclass
class Group:
    """One query and its documents; ``teacher[i]`` and ``labels[i]`` belong to ``docids[i]``."""

    qid: str
    query: str
    docids: list[str]
    docs: list[str]
    teacher: list[float]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.docids)


def build_groups(
    dataset: Dataset,
    scores: pl.DataFrame,
    config: GroupConfig,
    labels_from_qrels: bool = True,
    *,
    check_group_size: Callable[[int], None] | None = None,
) -> list[Group]:
    """Turn teacher scores ``qid, docid, score`` into one :class:`Group` per query.

    Hard labels are the qrels relevance (0 when unjudged), or all 0 without
    ``labels_from_qrels``. ``check_group_size`` is a loss's ``check_group_size``: groups it
    refuses are dropped with a counted warning, and a :class:`ConfigError` carrying its
    message is raised when none remain.
    """
    scores = _scores_for(dataset, scores)
    if labels_from_qrels:
        scores = scores.join(dataset.qrels.select(QID, DOCID, RELEVANCE), on=[QID, DOCID], how="left")
    else:
        scores = scores.with_columns(pl.lit(None, dtype=pl.Int32).alias(RELEVANCE))
    per_query = (
        scores.with_columns(pl.col(RELEVANCE).fill_null(0))
        .sort([QID, SCORE, DOCID], descending=[False, True, False])
        .group_by(QID, maintain_order=True)
        .agg(DOCID, SCORE, RELEVANCE)
    )
    texts = dict(zip(dataset.queries[QID].to_list(), dataset.queries[TEXT].to_list()))
    groups, fallbacks = [], 0
    for qid, docids, teacher, labels in per_query.iter_rows():
        picked = _pick(qid, teacher, labels, config)
        fallbacks += config.mode == "sampled" and config.positive_source == "qrels" and max(labels) <= 0
        groups.append(Group(qid=qid, query=texts[qid], docids=[docids[i] for i in picked], docs=[],
                            teacher=[float(teacher[i]) for i in picked], labels=[int(labels[i]) for i in picked]))
    if fallbacks:
        log.info("%d queries have no judged positive among their candidates: the teacher's top-1 is their positive",
                 fallbacks)
    groups = _drop_small(groups, check_group_size, config, per_query)
    all_docids = [d for g in groups for d in g.docids]
    all_docs = iter(dataset.doc_texts(all_docids))
    for group in groups:
        group.docs = [next(all_docs) for _ in group.docids]
    log.info("%d training groups (%s, %d documents each at most)", len(groups), config.mode,
             max(len(g) for g in groups))
    return groups


def _scores_for(dataset: Dataset, scores: pl.DataFrame) -> pl.DataFrame:
    """The teacher scores of the dataset's queries, checked: unique pairs, finite scores."""
    require_columns(scores, [QID, DOCID, SCORE], "teacher scores")
    scores = scores.select(QID, DOCID, pl.col(SCORE).cast(pl.Float64))
    if scores.select(QID, DOCID).is_duplicated().any():
        q, d = scores.filter(scores.select(QID, DOCID).is_duplicated()).row(0)[:2]
        raise InputError(f"teacher scores hold the pair ({q}, {d}) more than once", field=SCORE)
    bad = scores.filter(~pl.col(SCORE).is_finite())
    if bad.height:
        raise InputError(f"{bad.height} teacher scores are not finite (first: {bad.row(0)})", field=SCORE)
    known = scores.join(dataset.queries.select(QID), on=QID, how="semi")
    if known.height == 0:
        raise ConfigError(f"none of the {scores[QID].n_unique()} queries of the teacher scores is a query of "
                          f"split {dataset.split!r} of {dataset.name}; score this split's candidates first")
    if known.height < scores.height:
        log.warning("ignoring %d teacher scores of queries outside split %r", scores.height - known.height,
                    dataset.split)
    unknown_docs = known.join(dataset.corpus.select(DOCID), on=DOCID, how="anti")
    if unknown_docs.height:
        raise InputError(f"teacher scores name {unknown_docs[DOCID].n_unique()} document(s) the corpus lacks "
                         f"(first: {unknown_docs[DOCID][0]!r})", field=DOCID)
    return known


def _pick(qid: str, teacher: list[float], labels: list[int], config: GroupConfig) -> list[int]:
    """Indices (into the query's candidates, sorted by teacher score) of its group."""
    if config.mode == "listwise":
        return list(range(min(config.listwise_k, len(teacher))))
    positive = 0  # candidates are sorted by teacher score: index 0 is the teacher's top-1
    if config.positive_source == "qrels":
        best = max(labels)
        if best > 0:
            positive = labels.index(best)  # the first of the highest grade has the highest teacher score
    negatives = [i for i in range(len(teacher)) if i != positive and labels[i] <= 0]
    if config.false_negative_margin is not None:
        ceiling = teacher[positive] - config.false_negative_margin
        negatives = [i for i in negatives if teacher[i] <= ceiling]
    rng = random.Random(f"{config.seed}/{qid}")
    chosen = rng.sample(negatives, min(config.n_negatives, len(negatives)))
    return [positive, *sorted(chosen)]


def _drop_small(groups: list[Group], check: Callable[[int], None] | None, config: GroupConfig,
                per_query: pl.DataFrame) -> list[Group]:
    """Drop groups the loss refuses; raise when nothing is left."""
    kept, reason = [], None
    for group in groups:
        try:
            if check is not None:
                check(len(group))
        except ConfigError as err:
            reason = err.message
            continue
        kept.append(group)
    dropped = len(groups) - len(kept)
    if dropped and kept:
        log.warning("dropped %d of %d queries whose group is too small for the loss (%s)", dropped, len(groups),
                    reason)
    if not kept:
        sizes = per_query[DOCID].list.len()
        have = f"{sizes.min()}" if sizes.min() == sizes.max() else f"{sizes.min()}-{sizes.max()}"
        largest = max((len(g) for g in groups), default=0)
        guard = "" if config.false_negative_margin is None else (
            f"; the false-negative margin {config.false_negative_margin} removed some negatives")
        raise ConfigError(
            f"no training group fits: {reason}; the teacher cache has "
            f"{have} candidate(s) per query and the largest {config.mode} group built has "
            f"{largest} document(s){guard}. Score more candidates per query or pick another loss or mode"
        )
    return kept


def groups_to_hf_dataset(groups: list[Group]) -> Any:
    """A ``datasets.Dataset`` for sentence-transformers' trainers.

    Columns ``query, doc_0 .. doc_{L-1}, label`` with ``L`` the largest group. The trainers'
    collators turn ``label`` into a tensor ``[B, 3, L]``: row :data:`TEACHER_ROW` holds the
    teacher scores, :data:`RELEVANCE_ROW` the hard labels and :data:`MASK_ROW` 1 for real
    documents and 0 for padding (shorter groups are padded with empty texts).
    """
    from datasets import Dataset as HFDataset

    width = max(len(g) for g in groups)
    columns: dict[str, list] = {"query": [g.query for g in groups]}
    for i in range(width):
        columns[f"doc_{i}"] = [g.docs[i] if i < len(g) else "" for g in groups]
    columns["label"] = [
        [_pad([float(s) for s in g.teacher], width), _pad([float(r) for r in g.labels], width),
         _pad([1.0] * len(g), width)]
        for g in groups
    ]
    return HFDataset.from_dict(columns)


def _pad(values: list[float], width: int) -> list[float]:
    return values + [0.0] * (width - len(values))


def split_groups(groups: list[Group], valid_fraction: float, seed: int) -> tuple[list[Group], list[Group]]:
    """Hold out ``valid_fraction`` of the groups (by query, seeded); the rest train."""
    held = holdout([g.qid for g in groups], valid_fraction, seed)
    return [g for g in groups if g.qid not in held], [g for g in groups if g.qid in held]
