"""Ranking one query's documents through a cascade in process: the runtime behind ``distill serve``.

:meth:`distill.cascade.model.Cascade.load` reads a cascade spec and prepares it for requests;
:meth:`~distill.cascade.model.Cascade.rank` takes a query and its candidate documents (texts, or
``{"id", "text", "title"?, "score"?}`` objects) and returns a :class:`RankResult`: the ids in
their final order, their scores, their relevance scores and a :class:`StageReport` per stage (ran
or skipped, and why).

The ranking is the offline cascade's (:meth:`Cascade.rerank <distill.cascade.model.Cascade.rerank>`):
the same tie-breaking (score, then id), cutoffs and final order, and final scores
``n - rank + 1``. The first stage of a spec whose first stage is ``bm25`` (the candidates'
own scores) is the documents' ``score``, or, where none is given, their input order.

Relevance scores (``RankResult.relevance``): each document's probability of relevance in [0, 1],
from the latest stage that scored it, through that stage's calibration in the spec, or the
documented sigmoid rule where it has none (:mod:`distill.cascade.relevance`; the replayed first
stage reads its rank, as the given scores' scale is unknown). ``min_score`` drops the documents
whose relevance score is below it, before ``top_k`` keeps the first ones; the documents left keep
the scores (``n - rank + 1``) of their place in the full ranking.

Documents: with a corpus (``corpus=``, a ``corpus.jsonl`` or BEIR folder), a document whose
id is in it, sent without text or with the corpus's text, is that corpus document; its
precomputed parts (LightGBM's indexed terms, a bi-encoder's stored embedding) are reused.
Any other document is new: analysed or embedded on the fly, with the statistics saved with
the model. Rankers join the runtime through two methods of
:class:`~distill.rankers.base.BaseRanker`:

- ``prepare_runtime(corpus: Dataset | None)``: one-off work at load (index, embeddings);
- ``score_documents(query: str, docs: Documents) -> np.ndarray``: scores in ``docs`` order.

Rankers that do not override them are scored through ``score(queries, docs)`` where they declare
it (teachers, cross-encoders), else through ``rerank`` on a one-query :class:`~distill.data.beir.Dataset`.

Deadline: ``deadline_ms`` counts from ``started`` (a ``time.perf_counter()`` value; default:
the call). Before each stage after the first, the time spent plus the stage's expected cost
(the spec's :class:`~distill.cascade.model.StageCost` for its candidates, each counted by its length, or
its passages, in reference pairs: :func:`distill.inference.lengths.pair_weights`; :meth:`Runtime.estimate_ms`) is
compared with the deadline; a stage that would miss it is skipped with every stage after it,
and the documents keep the order they have. The first stage always runs: it is the cheapest answer.

A stage that returns NaN or a wrong number of scores is a fault of its model, not of the
request: :class:`ModelFault` (the server answers 500).

Scheduling: where :data:`STAGE_SCHEDULER` holds a scheduler (``distill serve``'s, batching concurrent requests),
each stage with a model is scored by ``scheduler(stage, query, docs, pair_chars, slack_ms) -> (scores, ms)``:
``slack_ms``, how long the stage's start may wait with the deadline's plan still holding (inf: no deadline);
``ms``, the request's share of its batch's model time (the stage's reported ``ms``, without the wait); scores
None: the stage could not start within the slack (skipped for the deadline, ``ms`` the time waited).

Thread safety: after load a runtime holds no state that requests change, except a teacher's
pending reduced precision, settled once under a lock; any number of threads may call ``rank``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from distill.cascade.relevance import stage_relevance
from distill.core.errors import ConfigError, InputError
from distill.core.schema import DOCID, QRELS_SCHEMA, QUERIES_SCHEMA, TEXT, TITLE
from distill.data.beir import Dataset, load_corpus
from distill.inference.lengths import pair_weights, passage_config, token_cap
from distill.rankers.base import BaseRanker, declares
from distill.rankers.documents import Documents, join_title

if TYPE_CHECKING:
    from distill.cascade.model import Cascade, StageCost
    from distill.evaluation.calibration import Calibration

log = logging.getLogger(__name__)

_DOC_FIELDS = frozenset({"id", "text", "title", "score"})
# the scheduler of the stages ranked in this context (see the module docstring); None: scored alone
STAGE_SCHEDULER: ContextVar[Callable[..., tuple[np.ndarray | None, float | None]] | None] = ContextVar(
    "stage_scheduler", default=None)


class ModelFault(RuntimeError):
    """A stage's model returned unusable scores (NaN, or not one per document): a server error."""


@dataclass(frozen=True)
class StageReport:
    """What one stage did for a request: whether it ran, its wall time, documents in and kept,
    and, for a skipped stage, why."""

    name: str
    ran: bool
    ms: float
    n_in: int
    n_out: int
    skipped: str | None = None


@dataclass(frozen=True)
class RankResult:
    """Every document's id in final order, its score (``n - rank + 1``), the stages' reports and
    each document's ``relevance``: its probability of relevance in [0, 1], in ``ids`` order."""

    ids: list[str]
    scores: list[float]
    stages: list[StageReport]
    relevance: list[float]


class RuntimeCorpus:
    """The documents a runtime knows by id, and a :class:`Dataset` of them for ``prepare`` steps."""

    def __init__(self, corpus: pl.DataFrame, source: str | Path | None = None) -> None:
        self.source = source
        self.dataset = Dataset(corpus=corpus, queries=pl.DataFrame(schema=QUERIES_SCHEMA),
                               qrels=pl.DataFrame(schema=QRELS_SCHEMA), name=Path(str(source or "corpus")).stem)
        self.ids = corpus[DOCID].to_list()
        self.titles = corpus[TITLE].fill_null("").to_list()
        self.texts = corpus[TEXT].fill_null("").to_list()
        self.row_of = {docid: row for row, docid in enumerate(self.ids)}

    @classmethod
    def read(cls, path: str | Path) -> RuntimeCorpus:
        """A ``corpus.jsonl`` file, or a BEIR folder holding one."""
        path = Path(path)
        file = path / "corpus.jsonl" if path.is_dir() else path
        return cls(load_corpus(file), file)

    def lookup(self, docid: str, title: str | None, text: str | None) -> int:
        """The corpus row of a document sent as (id, title, text), -1 when it is not that corpus document."""
        row = self.row_of.get(docid, -1)
        if row < 0 or text is None:
            return row
        if title is not None:
            same = title == self.titles[row] and text == self.texts[row]
        else:
            same = text == self.texts[row] or text == join_title(self.titles[row], self.texts[row])
        return row if same else -1


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"expected a finite number, got {value!r}", field=field)
    return float(value)


def _document(i: int, doc: Any) -> tuple[str, str | None, str | None, float | None]:
    """``(id, title, text, score)`` of request document ``i``, checked (a server parses
    a hundred per request, so the usual types take the short paths)."""
    where = f"documents[{i}]"
    if isinstance(doc, str):
        return str(i), None, doc, None
    if not isinstance(doc, Mapping):
        raise InputError(f"expected a text or an object, got {type(doc).__name__}", field=where)
    if doc.keys() - _DOC_FIELDS:
        unknown = sorted(map(str, doc.keys() - _DOC_FIELDS))
        raise InputError(f"unknown field(s) {unknown}; expected {sorted(_DOC_FIELDS)}", field=where)
    docid, title, text, score = doc.get("id", i), doc.get("title"), doc.get("text"), doc.get("score")
    if type(docid) is not str:
        if isinstance(docid, bool) or not isinstance(docid, (str, int)):
            raise InputError(f"expected a non-empty string, got {docid!r}", field=f"{where}.id")
        docid = str(docid)
    if not docid.strip():
        raise InputError(f"expected a non-empty string, got {docid!r}", field=f"{where}.id")
    for name, value in (("title", title), ("text", text)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"expected a string, got {type(value).__name__}", field=f"{where}.{name}")
    if score is not None and (type(score) is not float or not math.isfinite(score)):
        score = _number(score, f"{where}.score")
    return docid, title, text, score


def parse_documents(documents: Sequence[str | Mapping[str, Any]], corpus: RuntimeCorpus | None) -> Documents:
    """Check a request's documents (:class:`InputError` naming ``documents[i].<field>``) and
    resolve them against ``corpus``."""
    if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Sequence):
        raise InputError(f"expected a list of texts or objects, got {type(documents).__name__}", field="documents")
    ids, titles, texts, scores, rows, seen = [], [], [], [], [], {}
    for i, doc in enumerate(documents):
        docid, title, text, score = _document(i, doc)
        if docid in seen:
            raise InputError(f"id {docid!r} given twice (first at documents[{seen[docid]}])",
                             field=f"documents[{i}].id")
        seen[docid] = i
        row = -1 if corpus is None else corpus.lookup(docid, title, text)
        if row >= 0:
            title, text = corpus.titles[row], corpus.texts[row]
        elif text is None or not (text.strip() or (title or "").strip()):
            known = "" if corpus is None else " and the corpus has no document of this id"
            raise InputError(f"a document needs a non-empty text{known}", field=f"documents[{i}].text")
        ids.append(docid)
        titles.append(title or "")
        texts.append(text)
        scores.append(score)
        rows.append(row)
    given = [s is not None for s in scores]
    if any(given) and not all(given):
        raise InputError("give a first-stage score for every document or for none",
                         field=f"documents[{given.index(False)}].score")
    first_stage = np.asarray(scores, dtype=np.float64) if scores and all(given) else None
    return Documents(ids, titles, texts, first_stage, np.asarray(rows, dtype=np.int64))


def check_request(query: Any, deadline_ms: Any, top_k: Any, min_score: Any = None) -> None:
    """:class:`InputError` naming ``query``, ``deadline_ms``, ``top_k`` or ``min_score`` when one is unusable."""
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"expected a non-empty text, got {query!r}", field="query")
    if deadline_ms is not None and (_number(deadline_ms, "deadline_ms") <= 0):
        raise InputError(f"expected a number of milliseconds > 0, got {deadline_ms!r}", field="deadline_ms")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InputError(f"expected an integer >= 1, got {top_k!r}", field="top_k")
    if min_score is not None and not 0.0 <= _number(min_score, "min_score") <= 1.0:
        raise InputError(f"expected a probability in [0, 1], got {min_score!r}", field="min_score")


class DocumentScorer:
    """Scores of one query's documents from a ranker's
    :meth:`~distill.rankers.base.BaseRanker.score_documents`, its runtime prepared first. A ranker's
    own ``score_documents`` is thread-safe by contract; the default one (through ``score`` or
    ``rerank``) runs one call at a time: models hold state that calls share (a Hugging Face fast
    tokenizer refuses concurrent calls, a precision is settled once)."""

    def __init__(self, ranker: BaseRanker, corpus: Dataset | None = None) -> None:
        self.ranker = ranker
        ranker.prepare_runtime(corpus)
        self._lock = None if declares(ranker, "score_documents") else threading.Lock()
        # pairs of texts (the default score_documents through score) or its own score_requests: requests batch
        self.batchable = (self._lock is not None and declares(ranker, "score")) or declares(ranker, "score_requests")

    def __call__(self, query: str, docs: Documents) -> np.ndarray:
        with self._lock or nullcontext():
            return np.asarray(self.ranker.score_documents(query, docs), dtype=np.float64)

    def score_pairs(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """Scores of pairs of any queries and joined document texts, as the default ``score_documents``
        scores one query's: what batching requests together calls (where :attr:`batchable`)."""
        with self._lock or nullcontext():
            self.ranker.settle_precision(queries, texts)
            return np.asarray(self.ranker.score(queries, texts), dtype=np.float64)


class RuntimeStage:
    """One stage of a runtime cascade: its scorer (None: the first stage, replaying the given scores or
    the input order), cutoff, cost, calibration, the tokens its model truncates to and its passages."""

    def __init__(self, name: str, scorer: DocumentScorer | None, cutoff: int | None,
                 cost: StageCost | None, calibration: Calibration | None = None) -> None:
        self.name, self.scorer, self.cutoff, self.cost = name, scorer, cutoff, cost
        self.calibration = calibration
        self.max_tokens = None if scorer is None else token_cap(scorer.ranker)
        self.passages = None if scorer is None else passage_config(scorer.ranker)  # long documents: their passages

    @property
    def replays_first_stage(self) -> bool:
        return self.scorer is None

    def expected_ms(self, pairs: float) -> float:
        """The spec's cost for ``pairs`` reference pairs; 0 for the replayed first stage (its cost
        is the retrieval's, spent before the request) and for a stage without a cost."""
        if self.scorer is None or self.cost is None:
            return 0.0
        return self.cost.expected_ms(pairs)

    def pairs(self, pair_chars: np.ndarray) -> float:
        """Pairs of these lengths (characters) in this stage's reference pairs (:func:`pair_weights`)."""
        return float(pair_weights(pair_chars, self.max_tokens, self.passages).sum())

    def score(self, query: str, docs: Documents, pair_chars: np.ndarray,
              slack_ms: float) -> tuple[np.ndarray | None, float | None]:
        """The scores, and the stage's time for them where a scheduler tells it (None: the wall time)."""
        scheduler = None if self.scorer is None else STAGE_SCHEDULER.get()
        if scheduler is not None:
            return scheduler(self, query, docs, pair_chars, slack_ms)
        if self.scorer is not None:
            return self.scorer(query, docs), None
        return (np.arange(len(docs), 0, -1, dtype=np.float64) if docs.first_stage is None  # the input order
                else docs.first_stage), None


def runtime_ranker(name: str, ranker: BaseRanker) -> BaseRanker:
    """The ranker a stage runs with: a teacher cache is replaced by its teacher model, since
    a request's pairs are not in any cache; a run file cannot score new documents."""
    from distill.rankers.loading import RunRanker

    if isinstance(ranker, RunRanker):
        raise ConfigError(f"stage {name!r} replays a run file, which cannot score a request's documents",
                          field="stages")
    live = ranker.live()
    if live is None:
        raise ConfigError(f"stage {name!r} replays a teacher cache whose fingerprint names no model",
                          field="stages")
    return live


class Runtime:
    """A cascade prepared for requests (see the module docstring); built by :meth:`Cascade.load`."""

    def __init__(self, cascade: Cascade, corpus: RuntimeCorpus | None = None) -> None:
        from distill.rankers.loading import RunRanker

        self.corpus = corpus
        self.stages: list[RuntimeStage] = []
        dataset = None if corpus is None else corpus.dataset
        for i, s in enumerate(cascade.stages):
            replays = i == 0 and isinstance(s.ranker, RunRanker) and s.ranker.scores is None
            scorer = None if replays else DocumentScorer(runtime_ranker(s.name, s.ranker), dataset)
            self.stages.append(RuntimeStage(s.name, scorer, s.cutoff, cascade.costs.get(s.name), s.calibration))
        lacking = [st.name for st in self.stages if st.cost is None and not st.replays_first_stage]
        if lacking:
            log.warning("stage(s) %s have no cost in the spec: deadlines cannot skip them", lacking)

    def estimate_ms(self, n_docs: int | Sequence[int]) -> list[float]:
        """Expected milliseconds of each stage for ``n_docs`` candidates of the reference length, or
        for pairs of these lengths in characters (query plus document: what the server plans with);
        each stage sees the survivors of the cutoffs before it, planned at the pairs' mean weight."""
        if isinstance(n_docs, (int, np.integer)) and not isinstance(n_docs, bool) and n_docs >= 0:
            return self._estimate(int(n_docs), None)
        if isinstance(n_docs, (str, bytes, Mapping)) or not isinstance(n_docs, (Sequence, np.ndarray)):
            raise InputError(f"expected an integer >= 0 or a list of lengths, got {n_docs!r}", field="n_docs")
        chars = np.asarray(n_docs, dtype=np.float64)
        if chars.ndim != 1 or not np.isfinite(chars).all() or (chars < 0).any():
            raise InputError("expected document lengths >= 0", field="n_docs")
        return self._estimate(len(chars), chars)

    def _estimate(self, n: int, chars: np.ndarray | None) -> list[float]:
        out = []
        for st in self.stages:
            mean = 1.0 if chars is None or not n else st.pairs(chars) / len(chars)
            out.append(st.expected_ms(n * mean))
            n = n if st.cutoff is None else min(n, st.cutoff)
        return out

    def rank(self, query: str, documents: Sequence[str | Mapping[str, Any]], deadline_ms: float | None = None,
             top_k: int | None = None, started: float | None = None, min_score: float | None = None) -> RankResult:
        """Rank ``documents`` for ``query`` (see the module docstring)."""
        started = time.perf_counter() if started is None else started
        check_request(query, deadline_ms, top_k, min_score)
        docs = parse_documents(documents, self.corpus)
        relevance = np.full(len(docs), np.nan)
        final, reports = self._run_stages(query, docs, deadline_ms, started, relevance)
        scores = np.arange(len(final), 0, -1, dtype=np.float64)
        if min_score is not None:
            passes = relevance[final] >= min_score
            final, scores = final[passes], scores[passes]
        final, scores = final[:top_k], scores[:top_k]
        return RankResult([docs.ids[i] for i in final.tolist()], scores.tolist(), reports, relevance[final].tolist())

    def _run_stages(self, query: str, docs: Documents, deadline_ms: float | None, started: float,
                    relevance: np.ndarray) -> tuple[np.ndarray, list[StageReport]]:
        """The documents' final order (indices into ``docs``) and the stages' reports; each stage that
        runs writes the relevance scores of the documents it scored into ``relevance``."""
        ids = np.asarray(docs.ids, dtype=object)
        pair_chars = docs.chars() + len(query)
        survivors = np.arange(len(docs))
        cut_away: list[np.ndarray] = []
        reports: list[StageReport] = []
        skip_reason: str | None = None
        for i, st in enumerate(self.stages):
            n_in, slack, scores = len(survivors), math.inf, None
            if skip_reason is None and deadline_ms is not None:
                spent = (time.perf_counter() - started) * 1000.0
                expected = st.expected_ms(st.pairs(pair_chars[survivors]))
                slack = deadline_ms - spent - expected
                if i > 0 and slack < 0:
                    skip_reason = f"deadline: {spent:.2f} ms spent + {expected:.2f} ms expected > {deadline_ms:g} ms"
            if skip_reason is None:
                start = time.perf_counter()
                scores, ms = (st.score(query, docs.take(survivors), pair_chars[survivors], slack) if n_in
                              else (np.zeros(0), None))
                if scores is None:  # its scheduler could not start it within the slack
                    skip_reason = f"deadline: waited {ms:.2f} ms for the model, past the slack of {slack:.2f} ms"
            if scores is None:
                reports.append(StageReport(st.name, False, 0.0, n_in, n_in, skip_reason))
                if skip_reason.startswith("deadline"):
                    skip_reason = f"after skipped stage {st.name!r}"
                continue
            if scores.shape != (n_in,) or np.isnan(scores).any():
                raise ModelFault(f"stage {st.name!r} returned {scores.shape} scores for {n_in} documents "
                                 "(or NaN)")
            # score descending, then id: the offline cascade's order
            by_stage = np.lexsort((ids[survivors].astype(str), -scores))
            order = survivors[by_stage]
            relevance[order] = stage_relevance(st.calibration, scores[by_stage], np.arange(1, n_in + 1),
                                               st.replays_first_stage)
            if st.cutoff is not None:
                cut_away.append(order[st.cutoff:])
                order = order[: st.cutoff]
            survivors = order
            ms = (time.perf_counter() - start) * 1000.0 if ms is None else ms
            reports.append(StageReport(st.name, True, ms, n_in, len(order)))
        return np.concatenate([survivors, *reversed(cut_away)]).astype(np.int64), reports
