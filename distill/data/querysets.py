"""Training queries beyond a split's qrels: a plain queries file, and pseudo-queries from the corpus.

Distillation needs queries, not judgements: the teacher labels whatever candidates a
query retrieves. Two sources of unlabelled queries:

- a **queries file** (``--queries FILE``): BEIR ``queries.jsonl`` (``_id``, ``text``) or a
  TSV ``qid<TAB>text`` (a query log), with no qrels;
- **pseudo-queries** built from each document's own text, deterministically and offline:
  its title where it has one (``title:<docid>``), else its first sentence (``sent:<docid>``),
  or its highest-IDF terms (``idf:<docid>``). Repeated texts are kept once.

:func:`load_training_queries` joins such a file to a split's (judged) queries, so every
command that takes training queries (``candidates``, ``score-teacher``, ``train-student``)
takes both.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QRELS_SCHEMA, QUERIES_SCHEMA, TEXT, TITLE
from distill.data.beir import Dataset, check_id, load_beir, load_corpus, read_lines

PSEUDO_KINDS = ("auto", "title", "first-sentence", "idf")
_PREFIX = {"title": "title:", "first-sentence": "sent:", "idf": "idf:"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"[^\W_]+")


def read_queries_file(path: str | Path) -> pl.DataFrame:
    """A queries file as ``qid, text``: BEIR JSONL (first non-blank character ``{``) or TSV
    ``qid<TAB>text`` (an optional header ``qid<TAB>text`` / ``query-id<TAB>text`` is skipped)."""
    path = Path(path)
    first = next(read_lines(path), None)
    if first is None:
        raise InputError("no queries", path=path)
    if first[1].lstrip().startswith("{"):
        from distill.data.beir import load_queries

        return load_queries(path)
    ids, texts, seen = [], [], {}
    for number, line in read_lines(path):
        parts = line.split("\t")
        if number == first[0] and parts[0].strip().lower() in {"qid", "query-id", "query_id", "_id"}:
            continue
        if len(parts) != 2:
            raise InputError(f"expected 2 tab-separated columns (qid, text), got {len(parts)}", path=path,
                             line=number)
        qid, text = parts[0].strip(), parts[1].strip()
        for field, value in (("qid", qid), ("text", text)):
            if not value:
                raise InputError("empty", path=path, line=number, field=field)
        check_id(qid, path, number, "qid")
        if qid in seen:
            raise InputError(f"duplicate id {qid!r} (first on line {seen[qid]})", path=path, line=number,
                             field="qid")
        seen[qid] = number
        ids.append(qid)
        texts.append(text)
    if not ids:
        raise InputError("no queries", path=path)
    return pl.DataFrame({QID: ids, TEXT: texts}, schema=QUERIES_SCHEMA)


def write_queries_jsonl(queries: pl.DataFrame, path: str | Path) -> Path:
    """``queries`` as BEIR ``queries.jsonl``, written atomically."""
    from distill.core.io import write_text_atomic

    lines = [json.dumps({"_id": q, "text": t}, ensure_ascii=False) for q, t in queries.iter_rows()]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return Path(path)


def load_training_queries(data: str | Path, split: str | None, queries: str | Path | None) -> Dataset:
    """The queries a command trains or scores on: ``split``'s judged queries, the queries of the
    file ``queries`` (unjudged), or both (the file's added to the split's). The corpus is ``data``'s."""
    if queries is None:
        if split is None:
            raise ConfigError("give --split, --queries FILE or both")
        return load_beir(data, split)
    extra = read_queries_file(queries)
    if split is not None:
        base = load_beir(data, split)
        corpus, qrels = base.corpus, base.qrels
        clash = extra.join(base.queries, on=QID, how="inner").filter(pl.col(TEXT) != pl.col(f"{TEXT}_right"))
        if clash.height:
            raise InputError(f"query id {clash[QID][0]!r} is also a query of split {split!r}, with another text",
                             path=queries, field="qid")
        extra = pl.concat([base.queries, extra.join(base.queries, on=QID, how="anti")])
        name = f"{split}+{Path(queries).stem}"
    else:
        corpus, qrels, name = load_corpus(Path(data) / "corpus.jsonl"), pl.DataFrame(schema=QRELS_SCHEMA), None
    return Dataset(corpus=corpus, queries=extra, qrels=qrels, name=Path(data).name,
                   split=name or f"queries:{Path(queries).stem}", path=Path(data))


def _first_sentence(text: str, max_words: int) -> str:
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    return " ".join(sentence.split()[:max_words])


def _idf_terms(texts: list[str], n_terms: int) -> list[str]:
    """Each text's ``n_terms`` highest-IDF distinct tokens (IDF over ``texts``), in text order."""
    tokens = [_TOKEN.findall(t.lower()) for t in texts]
    df = Counter(tok for toks in tokens for tok in set(toks))
    total = len(texts)
    out = []
    for toks in tokens:
        unique = list(dict.fromkeys(toks))
        top = set(sorted(unique, key=lambda t: (-math.log(total / df[t]), t))[:n_terms])
        out.append(" ".join(t for t in unique if t in top))
    return out


def _parse_kinds(kind: str) -> list[str]:
    kinds = [k.strip() for k in kind.split(",") if k.strip()]
    bad = [k for k in kinds if k not in PSEUDO_KINDS]
    if bad or not kinds:
        raise ConfigError(f"pseudo-query kind must be one of {', '.join(PSEUDO_KINDS)} (or several, comma-separated), "
                          f"got {kind!r}", field="kind")
    return kinds


def pseudo_queries(corpus: pl.DataFrame, kind: str = "auto", *, max_queries: int | None = None,
                   max_words: int = 16, idf_terms: int = 6, seed: int = 42) -> pl.DataFrame:
    """Pseudo-queries (``qid, text``) from each document, deterministic for the same corpus and settings.

    ``title``: the document's title (documents without one give none); ``first-sentence``: the
    first sentence of its text, cut to ``max_words`` words; ``idf``: its ``idf_terms`` rarest
    words; ``auto``: the title where there is one, else the first sentence. Several kinds,
    comma-separated (``title,first-sentence``), give up to one query of each kind per document.
    A text already given (compared case-blind) is kept once, for the smallest docid. With
    ``max_queries``, a seeded sample of that many (independent of the corpus file's order).
    """
    kinds = _parse_kinds(kind)
    docs = corpus.select(DOCID, pl.col(TITLE).fill_null("").str.strip_chars(),
                         pl.col(TEXT).fill_null("").str.strip_chars()).sort(DOCID)
    ids, titles, texts = docs[DOCID].to_list(), docs[TITLE].to_list(), docs[TEXT].to_list()
    idf = _idf_terms([f"{a} {b}" for a, b in zip(titles, texts)], idf_terms) if "idf" in kinds else None
    rows, seen = [], set()
    for one in kinds:
        for i, docid in enumerate(ids):
            if one == "idf":
                chosen, text = "idf", idf[i]
            elif titles[i] and one in ("auto", "title"):
                chosen, text = "title", titles[i]
            elif one in ("auto", "first-sentence"):
                chosen, text = "first-sentence", _first_sentence(texts[i] or titles[i], max_words)
            else:
                continue
            key = " ".join(text.lower().split())
            if key and key not in seen:
                seen.add(key)
                rows.append((_PREFIX[chosen] + docid, text))
    if not rows:
        raise ConfigError(f"no {kind} pseudo-query could be built from this corpus (no titles?); try --kind auto")
    if max_queries is not None and max_queries < len(rows):
        rows = sorted(random.Random(seed).sample(sorted(rows), max_queries))
    return pl.DataFrame(rows, schema=QUERIES_SCHEMA, orient="row")


def pseudo_queries_for(data: str | Path, out: str | Path, kind: str = "auto", *,
                       max_queries: int | None = None, seed: int = 42) -> Path:
    """Write ``data``'s pseudo-queries (see :func:`pseudo_queries`) to ``out`` as BEIR JSONL."""
    corpus = load_corpus(Path(data) / "corpus.jsonl").cast(CORPUS_SCHEMA)
    return write_queries_jsonl(pseudo_queries(corpus, kind, max_queries=max_queries, seed=seed), out)


__all__ = ["PSEUDO_KINDS", "load_training_queries", "pseudo_queries", "pseudo_queries_for",
           "read_queries_file", "write_queries_jsonl"]
