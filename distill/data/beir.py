"""BEIR-format datasets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Loading is strict: a malformed line, a missing or empty field, a duplicate id or an id in
the qrels that the corpus or queries lack is an :class:`~distill.core.errors.InputError`
naming the file, the line and the field. So are text a UTF-8 file cannot hold (a lone
surrogate, which JSON can escape as ``\\udc80``), ids with whitespace (a TREC run splits its
columns on any whitespace, so such an id could be written but not read back) and relevance
grades that are not integers of the qrels' Int32 column. Graded labels are kept as they are.
A UTF-8 byte-order mark at the start of any file is ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import polars as pl

from distill.core.errors import InputError
from distill.core.schema import (
    CORPUS_SCHEMA,
    DOCID,
    QID,
    QRELS_SCHEMA,
    QUERIES_SCHEMA,
    RELEVANCE,
    RELEVANCE_RANGE,
    TEXT,
    TITLE,
)

BOM = "\ufeff"
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s")  # what str.split() splits on, so what a TREC run reader splits on


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file, without line endings.

    Blank lines are skipped and a byte-order mark opening the file is dropped (as ``utf-8-sig``
    does: Windows editors and spreadsheet exports write one). Missing files and non-UTF-8 bytes
    raise :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found" if not path.exists() else "not a file", path=path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(
                    f"not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})",
                    path=path, line=number,
                ) from None
            line = line.rstrip("\r\n")
            if number == 1 and line.startswith(BOM):
                line = line[1:]
            if line.strip():
                yield number, line


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each JSON object line of ``path``."""
    for number, line in read_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON: {err.msg} (column {err.colno})", path=path, line=number) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=number)
        yield number, obj


def shown(value: str, limit: int = 40) -> str:
    """``value`` quoted for a one-line error message: escaped (a lone surrogate cannot be printed) and cut."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def check_text(value: str, path: str | Path, line: int, field: str) -> str:
    """``value`` unless it holds a lone surrogate: JSON can escape one, but it is no character,
    so no tokenizer, hash or UTF-8 file could take it later."""
    found = _SURROGATE.search(value)
    if found:
        raise InputError(f"lone surrogate {found.group()!r} at character {found.start()} (not valid Unicode text)",
                         path=path, line=line, field=field)
    return value


def check_id(value: str, path: str | Path, line: int, field: str) -> str:
    """``value`` unless it holds whitespace: a TREC run splits its columns on whitespace, so such an id
    would be written into runs that no reader (``evaluate`` included) could read back."""
    found = _WHITESPACE.search(value)
    if found:
        raise InputError(f"id {shown(value)} contains whitespace ({found.group()!r}), which TREC runs cannot hold",
                         path=path, line=line, field=field)
    return value


def get_field(obj: dict, field: str, path: str | Path, line: int, *, allow_empty: bool = False) -> str:
    """A field as a string: ids may be numbers in JSON; text must be a non-empty string of characters."""
    if field not in obj or obj[field] is None:
        raise InputError("missing", path=path, line=line, field=field)
    value = obj[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=field)
    value = str(value)
    if not allow_empty and not value.strip():
        raise InputError("empty", path=path, line=line, field=field)
    return check_text(value, path, line, field)


def get_id(obj: dict, field: str, path: str | Path, line: int) -> str:
    """An id field (see :func:`get_field`) that a TREC run can hold (see :func:`check_id`)."""
    return check_id(get_field(obj, field, path, line), path, line, field)


def parse_grade(text: str, path: str | Path, line: int) -> int:
    """A qrels score as the integer relevance grade it must be (BEIR and TREC grades are integers).

    ``1.0`` or ``2e0`` are that integer; a fraction, a non-finite value or one outside the Int32
    column is refused rather than truncated or overflowed. Parsed exactly (no float rounding).
    """
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InputError(f"not a number: {shown(text)}", path=path, line=line, field="score") from None
    if not value.is_finite():
        raise InputError(f"not finite: {shown(text)}", path=path, line=line, field="score")
    low, high = RELEVANCE_RANGE
    if not low <= value <= high:
        raise InputError(f"out of range: {shown(text)} (grades are integers from {low} to {high})",
                         path=path, line=line, field="score")
    if value != value.to_integral_value():
        raise InputError(f"not an integer grade: {shown(text)} (relevance grades are integers)",
                         path=path, line=line, field="score")
    return int(value)


def _check_unique(ids: list[str], lines: list[int], path: Path, field: str) -> None:
    seen: dict[str, int] = {}
    for id_, line in zip(ids, lines):
        if id_ in seen:
            raise InputError(f"duplicate id {id_!r} (first on line {seen[id_]})", path=path, line=line, field=field)
        seen[id_] = line


def load_corpus(path: str | Path) -> pl.DataFrame:
    """``corpus.jsonl`` (``_id``, ``title``, ``text``) as a ``docid, title, text`` table.

    A document may have an empty title or an empty text, not both.
    """
    path = Path(path)
    ids, titles, texts, lines = [], [], [], []
    for line, obj in read_jsonl(path):
        ids.append(get_id(obj, "_id", path, line))
        title = get_field(obj, "title", path, line, allow_empty=True) if obj.get("title") is not None else ""
        text = get_field(obj, "text", path, line, allow_empty=True)
        if not (title.strip() or text.strip()):
            raise InputError("empty document (no title and no text)", path=path, line=line, field="text")
        titles.append(title)
        texts.append(text)
        lines.append(line)
    if not ids:
        raise InputError("no documents", path=path)
    _check_unique(ids, lines, path, "_id")
    return pl.DataFrame({DOCID: ids, TITLE: titles, TEXT: texts}, schema=CORPUS_SCHEMA)


def load_queries(path: str | Path) -> pl.DataFrame:
    """``queries.jsonl`` (``_id``, ``text``) as a ``qid, text`` table; ``metadata`` is never read."""
    path = Path(path)
    ids, texts, lines = [], [], []
    for line, obj in read_jsonl(path):
        ids.append(get_id(obj, "_id", path, line))
        texts.append(get_field(obj, "text", path, line))
        lines.append(line)
    if not ids:
        raise InputError("no queries", path=path)
    _check_unique(ids, lines, path, "_id")
    return pl.DataFrame({QID: ids, TEXT: texts}, schema=QUERIES_SCHEMA)


def load_qrels(path: str | Path) -> pl.DataFrame:
    """A qrels file as ``qid, docid, relevance``.

    Accepts BEIR's TSV (``query-id corpus-id score`` with a header) and TREC's
    ``qid 0 docid relevance`` (whitespace separated). Scores must be integer grades (:func:`parse_grade`).
    """
    path = Path(path)
    qids, docids, rels, seen = [], [], [], {}
    for line, text in read_lines(path):
        parts = text.split("\t") if "\t" in text else text.split()
        if line == 1 and parts and parts[0].strip().lower() in {"query-id", "qid", "query_id"}:
            continue
        if len(parts) == 4:
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise InputError(
                f"expected 3 tab-separated columns (query-id, corpus-id, score) or 4 (TREC), got {len(parts)}",
                path=path, line=line,
            )
        qid, docid, rel = (p.strip() for p in parts)
        for name, value in (("query-id", qid), ("corpus-id", docid)):
            if not value:
                raise InputError("empty", path=path, line=line, field=name)
            check_id(value, path, line, name)
        relevance = parse_grade(rel, path, line)
        if (qid, docid) in seen:
            raise InputError(
                f"duplicate pair ({qid}, {docid}) (first on line {seen[(qid, docid)]})", path=path, line=line
            )
        seen[(qid, docid)] = line
        qids.append(qid)
        docids.append(docid)
        rels.append(relevance)
    if not qids:
        raise InputError("no judgements", path=path)
    return pl.DataFrame({QID: qids, DOCID: docids, RELEVANCE: rels}, schema=QRELS_SCHEMA)


@dataclass
class Dataset:
    """A BEIR dataset restricted to one split's queries (all of them when ``split`` is None)."""

    corpus: pl.DataFrame
    queries: pl.DataFrame
    qrels: pl.DataFrame
    name: str = "dataset"
    split: str | None = None
    path: Path | None = None

    def doc_texts(self, docids: list[str] | pl.Series) -> list[str]:
        """Documents as ``"title text"`` strings (the form rerankers are trained on)."""
        frame = pl.DataFrame({DOCID: pl.Series(docids, dtype=pl.String)})
        joined = frame.join(self._doc_strings, on=DOCID, how="left", maintain_order="left")
        return joined["doc"].to_list()

    def query_texts(self, qids: list[str] | pl.Series) -> list[str]:
        frame = pl.DataFrame({QID: pl.Series(qids, dtype=pl.String)})
        return frame.join(self.queries, on=QID, how="left", maintain_order="left")[TEXT].to_list()

    @property
    def _doc_strings(self) -> pl.DataFrame:
        if not hasattr(self, "_doc_cache"):
            title = pl.col(TITLE).fill_null("").str.strip_chars()
            text = pl.col(TEXT).fill_null("").str.strip_chars()
            doc = pl.when(title == "").then(text).otherwise(pl.concat_str([title, text], separator=" "))
            self._doc_cache = self.corpus.select(DOCID, doc.str.strip_chars().alias("doc"))
        return self._doc_cache


def load_beir(path: str | Path, split: str | None = None) -> Dataset:
    """Load a BEIR folder; with ``split``, keep the queries judged in ``qrels/<split>.tsv``."""
    root = Path(path)
    if not root.is_dir():
        raise InputError("dataset folder not found", path=root)
    corpus = load_corpus(root / "corpus.jsonl")
    queries = load_queries(root / "queries.jsonl")
    if split is None:
        qrels_files = sorted((root / "qrels").glob("*.tsv"))
        if not qrels_files:
            raise InputError("no qrels/*.tsv files", path=root / "qrels")
        qrels = pl.concat([load_qrels(f) for f in qrels_files]).unique(maintain_order=True)
        qrels_path = root / "qrels"
    else:
        qrels_path = root / "qrels" / f"{split}.tsv"
        if not qrels_path.exists():
            have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
            raise InputError(f"no qrels for split {split!r} (splits here: {have})", path=qrels_path)
        qrels = load_qrels(qrels_path)
    check_ids(qrels, queries, QID, qrels_path, "query-id", "queries.jsonl")
    check_ids(qrels, corpus, DOCID, qrels_path, "corpus-id", "corpus.jsonl")
    queries = queries.join(qrels.select(QID).unique(), on=QID, how="semi", maintain_order="left")
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name=root.name, split=split, path=root)


def check_ids(frame: pl.DataFrame, known: pl.DataFrame, column: str, path: Path, field: str, where: str) -> None:
    """Raise when ``frame[column]`` holds an id that ``known`` lacks (first offender named)."""
    unknown = frame.join(known.select(column), on=column, how="anti")
    if unknown.height:
        first = unknown[column][0]
        raise InputError(
            f"unknown id {first!r} ({unknown[column].n_unique()} id(s) not in {where})",
            path=path, line=_first_line_with(path, first), field=field,
        )


def _first_line_with(path: Path, token: str) -> int | None:
    """The line of a whitespace-separated file where ``token`` first stands (for error messages)."""
    if not Path(path).is_file():
        return None
    for number, line in read_lines(path):
        if token in line.split():
            return number
    return None


