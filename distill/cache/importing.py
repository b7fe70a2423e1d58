"""Teacher scores computed elsewhere, imported into a teacher cache (``distill cache import``).

Any teacher can be distilled from: a model run on another machine, an API, an LLM that only ranks.
Its scores become a regular cache (:mod:`distill.cache.store`) that the students, ``cache info``,
``fuse-teacher`` and ``evaluate`` read as they read a scored one. The forms read (``--format``, else
from each file's extension: ``.trec``/``.run``/``.txt``, ``.jsonl``, ``.parquet``, ``.tsv``):

- ``trec``: a scored TREC run, ``qid Q0 docid rank score tag``;
- ``jsonl``: ``{"query": text, "pos": [texts], "neg": [texts], "pos_scores": [...], "neg_scores": [...]}``
  (FlagEmbedding's form), or ms-swift's ``positive``/``negative`` (``score-teacher --pairs``) with
  ``positive_scores``/``negative_scores``;
- ``parquet``: columns ``qid, docid, score`` or ``query, text, score``;
- ``tsv``: ``qid<TAB>docid<TAB>score`` (a header ``query<TAB>text<TAB>score`` makes the columns texts),
  or five columns ``query, positive, negative, positive score, negative score`` (triples with scores).

With ``ranks_only`` the number read is a rank (lower is better: the TREC rank column, a Parquet
``rank`` column, a TSV's third column; a JSONL line ranks ``pos`` then ``neg`` in list order), and
the cache stores a score derived from it by :data:`RANK_RULE`; its fingerprint says ``ranks_only``.

Texts map to the ids of ``--data`` (a document by its ``title text`` string or its ``text``; a text
held by several takes the first in corpus order) and of ``--queries``. A query whose text (or id) is in
neither is skipped, all of them counted in one warning; a document the corpus lacks, a pair given twice
(across files too; a triples file may repeat a pair with the same score) and a non-finite number are an
:class:`InputError` naming the file and line (a Parquet file's row). Equal scores stay equal; equal
ranks keep the order of the files and their lines. Each pair gets the hashes of the texts known at
import (:mod:`distill.cache.texts`), and the fingerprint holds the teacher's name, each file's SHA-256
and the options, so another source into the same folder is refused as another teacher.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from distill.cache.store import TeacherCache
from distill.cache.texts import text_hashes
from distill.core.errors import ConfigError, InputError
from distill.core.manifest import frame_hash
from distill.core.schema import DOCID, QID, SCORE, TEXT
from distill.data.beir import Dataset, check_text, get_field, load_corpus, load_queries, read_jsonl, read_lines, shown

log = logging.getLogger(__name__)

FORMATS = ("trec", "jsonl", "parquet", "tsv")
EXTENSIONS = {".trec": "trec", ".run": "trec", ".txt": "trec", ".jsonl": "jsonl", ".parquet": "parquet",
              ".tsv": "tsv"}
IMPORTED = "imported"  # the kind in an imported teacher's fingerprint
RANKS_ONLY = "ranks_only"  # the fingerprint's mark of a ranking without scores
RANK_RULE = "score = -ln(position)"  # position 1, 2, ... in the query's ranking, ties in file order
FLOAT32_MAX = 3.4028234663852886e38
# one row per (query, document) read: where (file, line or Parquet row, JSONL field), the query and the
# document as the file gives them (ids or texts), and the number (a score, or a rank)
ROWS = {"file": pl.String, "line": pl.Int64, "field": pl.String, "query": pl.String, "doc": pl.String,
        "value": pl.Float64}
JSONL_LISTS = (("pos", "positive"), ("neg", "negative"))  # the lists of a JSONL line, by their names


@dataclass(frozen=True)
class Source:
    """One file's ``rows`` (:data:`ROWS`); ``by_text``: its queries and documents are texts, not ids;
    ``repeats``: it may list a pair again with the same number (a triples file, once per triple)."""

    rows: pl.DataFrame
    by_text: bool
    repeats: bool = False


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_scores` wrote: ``pairs`` scores of ``queries`` queries into ``cache``, and the
    ``skipped_queries`` (with their ``skipped_pairs``) whose text neither ``--data`` nor ``--queries`` has."""

    cache: Path
    pairs: int
    queries: int
    skipped_queries: int
    skipped_pairs: int
    fingerprint: dict[str, Any]


def file_format(path: Path, given: str | None, formats: tuple[str, ...] = FORMATS) -> str:
    """``given`` if it is one of ``formats``, else the format of ``path``'s extension."""
    if given is not None:
        if given.lower() not in formats:
            raise ConfigError(f"unknown format {given!r}; choose one of {', '.join(formats)}", field="--format")
        return given.lower()
    found = EXTENSIONS.get(path.suffix.lower())
    if found not in formats:
        raise ConfigError(f"cannot tell the format from the extension {path.suffix!r}; give --format "
                          f"({', '.join(formats)})", path=path)
    return found


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (what identifies an imported source)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finite(value: float, text: Any, path: Path, line: int, field: str) -> float:
    """``value`` unless NaN, infinite or beyond float32 (the cache's scores): no teacher's score."""
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise InputError(f"not a finite float32 number: {shown(str(text))}", path=path, line=line, field=field)
    return value


def _number(text: str, path: Path, line: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"not a number: {shown(text)}", path=path, line=line, field=field) from None
    return _finite(value, text, path, line, field)


class _Rows:
    """Collects a file's rows in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: dict[str, list] = {name: [] for name in ROWS if name != "file"}

    def add(self, line: int, field: str | None, query: str, doc: str, value: float) -> None:
        for name, item in zip(("line", "field", "query", "doc", "value"), (line, field, query, doc, value)):
            self.columns[name].append(item)

    def frame(self) -> pl.DataFrame:
        if not self.columns["line"]:
            raise InputError("no scores", path=self.path)
        return pl.DataFrame({"file": [str(self.path)] * len(self.columns["line"]), **self.columns}, schema=ROWS)


def read_trec(path: Path, ranks_only: bool) -> Source:
    """A TREC run's rows; the number is its score, or its rank with ``ranks_only``. Not
    :func:`~distill.data.runs.read_run`, which recomputes the ranks from the scores and keeps no lines."""
    rows = _Rows(path)
    for line, text in read_lines(path):
        parts = text.split()
        if len(parts) != 6:
            raise InputError(f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}", path=path,
                             line=line)
        field = "rank" if ranks_only else "score"
        rows.add(line, None, parts[0], parts[2], _number(parts[3 if ranks_only else 4], path, line, field))
    return Source(rows.frame(), by_text=False)


def read_tsv(path: Path, ranks_only: bool) -> Source:
    """``qid, docid, score`` (``query, text, score`` under such a header), or five columns of triples with
    scores; with ``ranks_only`` the third column is a rank and triples are refused."""
    rows, width, by_text = _Rows(path), None, False
    for line, text in read_lines(path):
        parts = text.split("\t")
        if width is None:
            width = len(parts)
            if width not in (3, 5):
                raise InputError(f"expected 3 tab-separated columns (qid, docid, score) or 5 (query, positive, "
                                 f"negative, positive score, negative score), got {width}", path=path, line=line)
            if width == 5 and ranks_only:
                raise InputError("triples hold no ranking; --ranks-only reads 3 columns (qid, docid, rank)",
                                 path=path, line=line)
            header = not _is_number(parts[-1])
            by_text = width == 5 or (header and parts[0].strip().lower() == "query")
            if header:
                continue
        if len(parts) != width:
            raise InputError(f"expected {width} tab-separated columns like the first line, got {len(parts)}",
                             path=path, line=line)
        for i, value in enumerate(parts[:width - 2 if width == 5 else 2]):
            if not value.strip():
                raise InputError("empty", path=path, line=line, field=f"column {i + 1}")
        if width == 3:
            rows.add(line, None, parts[0], parts[1], _number(parts[2], path, line, "rank" if ranks_only else "score"))
        else:
            for doc, column in ((parts[1], 3), (parts[2], 4)):
                rows.add(line, None, parts[0], doc, _number(parts[column], path, line, f"column {column + 1}"))
    return Source(rows.frame(), by_text=by_text, repeats=width == 5)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_jsonl_lists(path: Path, ranks_only: bool) -> Source:
    """``{query, pos, neg, pos_scores, neg_scores}`` lines (or ms-swift's ``positive``/``negative``); with
    ``ranks_only`` the scores are not read and a line ranks ``pos`` then ``neg`` in list order."""
    rows = _Rows(path)
    for line, obj in read_jsonl(path):
        query = get_field(obj, "query", path, line)
        position = 0
        for names in JSONL_LISTS:
            name = next((n for n in names if n in obj), names[0])
            docs = _json_list(obj, name, path, line)
            scores = None if ranks_only else _json_list(obj, f"{name}_scores", path, line, len(docs))
            for i, doc in enumerate(docs):
                field = f"{name}[{i}]"
                if not isinstance(doc, str) or not doc.strip():
                    raise InputError("empty or non-string document", path=path, line=line, field=field)
                position += 1
                value = float(position) if scores is None else \
                    _json_number(scores[i], path, line, f"{name}_scores[{i}]")
                rows.add(line, field, query, check_text(doc, path, line, field), value)
        if not position:
            raise InputError("no documents in 'pos' or 'neg'", path=path, line=line, field="pos")
    return Source(rows.frame(), by_text=True)


def _json_list(obj: dict, name: str, path: Path, line: int, length: int | None = None) -> list:
    value = obj.get(name, [] if length is None or length == 0 else None)
    if not isinstance(value, list):
        raise InputError("missing" if value is None else f"expected a list, got {type(value).__name__}",
                         path=path, line=line, field=name)
    if length is not None and len(value) != length:
        raise InputError(f"{len(value)} scores for {length} documents", path=path, line=line, field=name)
    return value


def _json_number(value: Any, path: Path, line: int, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"expected a number, got {type(value).__name__}", path=path, line=line, field=field)
    return _finite(float(value), value, path, line, field)


def read_parquet_scores(path: Path, ranks_only: bool) -> Source:
    """Columns ``qid, docid`` or ``query, text``, and ``score`` (``rank`` with ``ranks_only``); a row's
    number (from 1) stands for its line."""
    try:
        frame = pl.read_parquet(path, glob=False)  # a name with [ or * is a name
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise InputError(f"not a readable Parquet file ({' '.join(str(err).split())[:200]})", path=path) from None
    by_text = "query" in frame.columns
    keys, number = (["query", TEXT] if by_text else [QID, DOCID]), "rank" if ranks_only else SCORE
    for column in (*keys, number):
        if column not in frame.columns:
            raise InputError(f"no column {column!r} (has {frame.columns}; expects qid, docid or query, text, and "
                             f"{number})", path=path, field=column)
    try:
        rows = frame.select(pl.col(keys[0]).cast(pl.String).alias("query"), pl.col(keys[1]).cast(pl.String)
                            .alias("doc"), pl.col(number).cast(pl.Float64).alias("value"))
    except pl.exceptions.PolarsError as err:
        raise InputError(f"unreadable columns ({' '.join(str(err).split())[:200]})", path=path) from None
    rows = rows.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("line"))
    _check_rows(rows, path, dict(zip(("query", "doc", "value"), (*keys, number))))
    return Source(rows.select(pl.lit(str(path)).alias("file"), "line", pl.lit(None, dtype=pl.String).alias("field"),
                              "query", "doc", "value").cast(ROWS), by_text=by_text)


def _check_rows(rows: pl.DataFrame, path: Path, names: dict[str, str]) -> None:
    """Refuse the first row with a missing value or a non-finite number; ``names``: the file's column of each."""
    bad = rows.filter(pl.any_horizontal(pl.col("query", "doc", "value").is_null())
                      | ~pl.col("value").is_finite() | (pl.col("value").abs() > FLOAT32_MAX))
    if not bad.height:
        return
    row = bad.row(0, named=True)
    for column, name in names.items():
        if row[column] is None:
            raise InputError(f"row {row['line']}: missing", path=path, line=row["line"], field=name)
    raise InputError(f"row {row['line']}: not a finite float32 number: {row['value']}", path=path, line=row["line"],
                     field=names["value"])


READERS = {"trec": read_trec, "jsonl": read_jsonl_lists, "parquet": read_parquet_scores, "tsv": read_tsv}


def import_dataset(data: Path, queries: Path | None = None) -> Dataset:
    """``data``'s corpus and every query of its ``queries.jsonl``, with those of the file ``queries``
    (:func:`~distill.data.querysets.read_queries_file`) added; an id both give other texts is refused."""
    from distill.core.schema import QRELS_SCHEMA
    from distill.data.querysets import read_queries_file

    root = Path(data)
    if not root.is_dir():
        raise InputError("dataset folder not found", path=root)
    known = load_queries(root / "queries.jsonl")
    if queries is not None:
        extra = read_queries_file(queries)
        clash = extra.join(known, on=QID, how="inner").filter(pl.col(TEXT) != pl.col(f"{TEXT}_right"))
        if clash.height:
            raise InputError(f"query id {clash[QID][0]!r} is also in {root / 'queries.jsonl'}, with another text",
                             path=queries, field="qid")
        known = pl.concat([known, extra.join(known, on=QID, how="anti")])
    return Dataset(corpus=load_corpus(root / "corpus.jsonl"), queries=known, qrels=pl.DataFrame(schema=QRELS_SCHEMA),
                   name=root.name, path=root)


def _indexes(dataset: Dataset, by_text: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What maps a file's ``query`` to a ``qid`` and its ``doc`` to a ``docid``: the ids themselves, or the
    texts (a document's ``title text`` string, then its text; a text held twice takes the first id)."""
    if not by_text:
        return (dataset.queries.select(pl.col(QID).alias("query"), QID),
                dataset.corpus.select(pl.col(DOCID).alias("doc"), DOCID))
    docids = dataset.corpus[DOCID]
    docs = pl.concat([pl.DataFrame({"doc": dataset.doc_texts(docids), DOCID: docids}, schema={"doc": pl.String,
                                                                                              DOCID: pl.String}),
                      dataset.corpus.select(pl.col(TEXT).str.strip_chars().alias("doc"), DOCID)])
    queries = dataset.queries.select(pl.col(TEXT).str.strip_chars().alias("query"), QID)
    return (queries.unique("query", keep="first", maintain_order=True),
            docs.unique("doc", keep="first", maintain_order=True))


def _keyed(source: Source, dataset: Dataset) -> pl.DataFrame:
    """``source``'s rows with ``qid`` (null: a query ``dataset`` lacks) and ``docid``; a document the corpus
    lacks is an InputError at its line."""
    queries, docs = _indexes(dataset, source.by_text)
    rows = source.rows.with_columns(pl.col("query", "doc").str.strip_chars()) if source.by_text else source.rows
    rows = rows.join(queries, on="query", how="left", maintain_order="left").join(
        docs, on="doc", how="left", maintain_order="left")
    missing = rows.filter(pl.col(DOCID).is_null())
    if missing.height:
        row, corpus = missing.row(0, named=True), Path(str(dataset.path)) / "corpus.jsonl"
        what = "the text of no document of" if source.by_text else "not a document id of"
        raise InputError(f"{shown(row['doc'])} is {what} {corpus} ({missing['doc'].n_unique()} such)",
                         path=row["file"], line=row["line"], field=row["field"] or "docid")
    if source.repeats:
        rows = rows.unique(subset=["query", DOCID, "value"], keep="first", maintain_order=True)
    return rows


def _check_duplicates(rows: pl.DataFrame) -> None:
    """Refuse a (query, document) pair given twice, at its second line, naming the first."""
    rows = rows.with_columns(pl.coalesce(QID, "query").alias("_q"))
    again = rows.filter(pl.int_range(pl.len()).over("_q", DOCID) > 0)
    if again.height:
        row = again.row(0, named=True)
        first = rows.filter((pl.col("_q") == row["_q"]) & (pl.col(DOCID) == row[DOCID])).row(0, named=True)
        raise InputError(f"pair ({shown(row['_q'])}, {row[DOCID]}) given twice (first at {first['file']}:"
                         f"{first['line']})", path=row["file"], line=row["line"], field=row["field"])


def _scores(rows: pl.DataFrame, ranks_only: bool) -> pl.DataFrame:
    """``qid, docid, score``: the number read, or with ``ranks_only`` :data:`RANK_RULE` of the pair's position
    in its query's ranking (ascending rank, equal ranks in the order read)."""
    score = pl.col("value")
    if ranks_only:
        score = (1.0 / pl.col("value").rank("ordinal").over(QID).cast(pl.Float64)).log()  # -ln(p); 0.0 at p = 1
    return rows.select(QID, DOCID, score.cast(pl.Float32).alias(SCORE))


def import_fingerprint(name: str, sources: list[dict[str, str]], ranks_only: bool) -> dict[str, Any]:
    """The imported teacher's identity: its ``name``, each source's format and SHA-256, and ``ranks_only``
    (with :data:`RANK_RULE`): the same import again matches it, another source does not."""
    fingerprint = {"kind": IMPORTED, "name": name, "sources": sources, RANKS_ONLY: ranks_only}
    return {**fingerprint, "rank_rule": RANK_RULE} if ranks_only else fingerprint


def is_ranks_only(fingerprint: dict[str, Any] | None) -> bool:
    """Whether a cache's teacher ``fingerprint`` is a ranking imported without scores."""
    return bool((fingerprint or {}).get(RANKS_ONLY))


def import_scores(files: list[Path], data: Path, teacher_name: str, out: Path, *, format: str | None = None,
                  queries: Path | None = None, ranks_only: bool = False) -> ImportResult:
    """Import the scores (or, ``ranks_only``, the rankings) of ``files`` on ``data``'s corpus and queries (and
    ``queries``') into the cache ``out`` as the teacher ``teacher_name`` (see the module docstring)."""
    if not teacher_name.strip():
        raise ConfigError("give the teacher a name", field="--teacher-name")
    if not files:
        raise ConfigError("no file to import")
    paths = [Path(f) for f in files]
    formats = [file_format(path, format) for path in paths]
    for path in paths:
        if not path.is_file():
            raise InputError("file not found" if not path.exists() else "not a file", path=path)
    dataset = import_dataset(data, queries)
    rows = pl.concat([_keyed(READERS[kind](path, ranks_only), dataset) for path, kind in zip(paths, formats)])
    _check_duplicates(rows)
    unknown = rows.filter(pl.col(QID).is_null())
    if unknown.height:
        log.warning("%d queries (%d pairs) have no text in %s%s (pseudo-queries? give --queries FILE): skipped",
                    unknown["query"].n_unique(), unknown.height, data, "" if queries is None else f" or {queries}")
    scores = _scores(rows.filter(pl.col(QID).is_not_null()), ranks_only)
    if not scores.height:
        raise InputError(f"no query of these files is in {data} or --queries", path=paths[0])
    sources = [{"format": kind, "sha256": file_sha256(path)} for path, kind in zip(paths, formats)]
    fingerprint = import_fingerprint(teacher_name.strip(), sources, ranks_only)
    cache = TeacherCache.create_or_open(out, fingerprint, frame_hash(dataset.corpus))
    cache.manifest["import"] = {"files": [str(p) for p in paths], "data": str(data),
                                "queries": None if queries is None else str(queries), "skipped_pairs": unknown.height}
    hashed = text_hashes(dataset, scores)  # the texts known now: rows of texts edited later go stale
    cache.register_candidates(hashed, "import:" + ",".join(p.name for p in paths))
    cache.append(scores.join(hashed, on=[QID, DOCID], how="left", maintain_order="left"))
    return ImportResult(Path(out), scores.height, scores[QID].n_unique(), unknown["query"].n_unique(),
                        unknown.height, fingerprint)
