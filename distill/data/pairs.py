"""Training files that carry texts instead of ids.

- candidate JSONL in ms-swift's reranker form: ``{"query": q, "positive": [d, ...], "negative": [d, ...]}``
- MS MARCO-style triples TSV: ``query <TAB> positive <TAB> negative``

Both become the internal form: a :class:`~distill.data.beir.Dataset` (texts by id, positives as
qrels with relevance 1) plus a candidate run (``qid, docid``). Ids are content hashes, so the
same text always gets the same id and repeated texts are stored once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from distill.core.errors import InputError
from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QRELS_SCHEMA, QUERIES_SCHEMA, RELEVANCE, TEXT, TITLE
from distill.data.beir import Dataset, check_text, get_field, read_jsonl, read_lines


def text_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


class _Builder:
    """Collects texts and (query, doc, label) rows, deduplicating by content."""

    def __init__(self) -> None:
        self.queries: dict[str, str] = {}
        self.docs: dict[str, str] = {}
        self.rows: dict[tuple[str, str], int] = {}

    def add(self, query: str, doc: str, label: int) -> None:
        qid, docid = text_id("q", query), text_id("d", doc)
        self.queries[qid] = query
        self.docs[docid] = doc
        self.rows[(qid, docid)] = max(label, self.rows.get((qid, docid), 0))

    def build(self, path: Path) -> tuple[Dataset, pl.DataFrame]:
        if not self.rows:
            raise InputError("no candidates", path=path)
        corpus = pl.DataFrame(
            {DOCID: list(self.docs), TITLE: [""] * len(self.docs), TEXT: list(self.docs.values())},
            schema=CORPUS_SCHEMA,
        )
        queries = pl.DataFrame({QID: list(self.queries), TEXT: list(self.queries.values())}, schema=QUERIES_SCHEMA)
        rows = pl.DataFrame(
            {QID: [k[0] for k in self.rows], DOCID: [k[1] for k in self.rows], RELEVANCE: list(self.rows.values())},
            schema=QRELS_SCHEMA,
        )
        qrels = rows.filter(pl.col(RELEVANCE) > 0)
        dataset = Dataset(corpus=corpus, queries=queries, qrels=qrels, name=path.stem, path=path)
        return dataset, rows.select(QID, DOCID)


def read_candidates_jsonl(path: str | Path) -> tuple[Dataset, pl.DataFrame]:
    """Read ms-swift style candidate JSONL into a dataset and a candidate run."""
    path = Path(path)
    builder = _Builder()
    for line, obj in read_jsonl(path):
        query = get_field(obj, "query", path, line)
        for field, label in (("positive", 1), ("negative", 0)):
            docs = obj.get(field, [])
            if not isinstance(docs, list):
                raise InputError(f"expected a list, got {type(docs).__name__}", path=path, line=line, field=field)
            for i, doc in enumerate(docs):
                if not isinstance(doc, str) or not doc.strip():
                    raise InputError("empty or non-string document", path=path, line=line, field=f"{field}[{i}]")
                builder.add(query, check_text(doc, path, line, f"{field}[{i}]"), label)
        if not obj.get("positive") and not obj.get("negative"):
            raise InputError("no documents in 'positive' or 'negative'", path=path, line=line, field="positive")
    return builder.build(path)


def read_triples_tsv(path: str | Path) -> tuple[Dataset, pl.DataFrame]:
    """Read ``query \\t positive \\t negative`` triples into a dataset and a candidate run."""
    path = Path(path)
    builder = _Builder()
    names = ("query", "positive", "negative")
    for line, text in read_lines(path):
        parts = text.split("\t")
        if len(parts) != 3:
            raise InputError(f"expected 3 tab-separated columns (query, positive, negative), got {len(parts)}",
                             path=path, line=line)
        for name, value in zip(names, parts):
            if not value.strip():
                raise InputError("empty", path=path, line=line, field=name)
        builder.add(parts[0], parts[1], 1)
        builder.add(parts[0], parts[2], 0)
    return builder.build(path)
