"""Reading a teacher cache's shards in bounded memory (issue 36): a batch of rows at a time, and the pairs
as integer codes.

Polars' joins and uniques on two string columns (qid, docid) take several times the frames' size, and a
compacted cache is one shard of every row; so a reader decodes ``BATCH_ROWS`` rows of a shard at a time
(:func:`read_shard`), keeps of each batch the rows that count as integer codes of their ids
(:meth:`PairCodes.counted`: one-key joins against the small tables of ids), finds the first row of each pair
on one UInt64 key (:func:`first_per_pair`) and turns the codes back into ids at the end
(:meth:`PairCodes.decode`). Which rows count is :mod:`distill.cache.texts`' rule, applied per id.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from distill.cache import files as cache_files
from distill.cache.texts import DHASH, QHASH, SIDES, empty_registry, text_hash
from distill.core.errors import InputError
from distill.core.schema import DOCID, QID, SCORE

BATCH_ROWS = 1 << 18  # shard rows a reader decodes at once
READ_ATTEMPTS = 20  # lists of shards a reader tries while compactions keep folding them away
CODES = ("_q", "_d")  # the columns of a pair's integer codes


class PairCodes:
    """Dense integer codes for the qids and docids of one cache read, and what the text registry (and a
    dataset's texts) says of each id, so that a reader judges shard rows a batch at a time and compares
    pairs as one UInt64 key: polars' joins and uniques on two string columns take several times the
    frames' size (issue 36), one-key joins against the (small) tables of ids do not.

    An id's code is its row in its side's table (the registry's ids first, others added as they come).
    Each table row holds the registry's hash ``_h`` and ``adopted`` ``_a`` of the id (null if it has
    none), and ``_ok``: its text in ``dataset`` hashes to ``_h`` (True without a dataset or a hash).
    """

    def __init__(self, registry: pl.DataFrame | None = None, dataset: Any = None) -> None:
        registry = empty_registry() if registry is None else registry
        self._tables = [_side_table(registry, side, key, dataset) for key, _, side in SIDES]

    def _coded(self, frame: pl.DataFrame, i: int, columns: tuple[str, ...] = ("_h", "_a", "_ok")) -> pl.DataFrame:
        """``frame`` with side ``i``'s id replaced by its code (``CODES[i]``) and the table's ``columns``."""
        key = SIDES[i][0]
        new = frame.select(pl.col(key).unique(maintain_order=True)).join(
            self._tables[i].select(key), on=key, how="anti", maintain_order="left")
        if new.height:
            unknown = new.with_columns(pl.lit(None, dtype=pl.String).alias("_h"),
                                       pl.lit(None, dtype=pl.Boolean).alias("_a"), pl.lit(True).alias("_ok"))
            self._tables[i] = pl.concat([self._tables[i], unknown])
        table = self._tables[i].with_row_index(CODES[i]).select(key, CODES[i], *columns)
        return frame.join(table, on=key, how="left", maintain_order="left").drop(key)

    def counted(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``_q, _d, score`` of the shard ``rows`` (qid, docid, score, qhash, dhash) that count: scored from
        the registry's current texts (``valid`` of :func:`distill.cache.texts.effective`) and, given a dataset,
        from its texts (:func:`distill.cache.texts.present`: all valid rows of an id carry the same hash, the
        registry's or none, so a row's own hashes decide for its pair)."""
        for i, (_, col, _) in enumerate(SIDES):
            rows = self._coded(rows, i)
            stored, registered = pl.col(col), pl.col("_h")
            current = ((stored.is_null() & pl.col("_a")) | (stored == registered)).fill_null(False)
            counts = pl.when(registered.is_null()).then(stored.is_null()).otherwise(current & pl.col("_ok"))
            rows = rows.filter(counts).drop(col, "_h", "_a", "_ok")
        return rows.select(*CODES, SCORE)

    def keys(self, pairs: pl.DataFrame) -> pl.Series:
        """One UInt64 key per row of ``pairs`` (qid, docid): equal keys, equal pairs."""
        coded = pairs.select(QID, DOCID)
        for i in range(len(SIDES)):
            coded = self._coded(coded, i, columns=())
        return coded.select(pair_key()).to_series()

    def decode(self, coded: pl.DataFrame) -> pl.DataFrame:
        """``qid, docid, score`` of the coded rows ``coded`` (``_q, _d, score``), in their order."""
        ids = [table[key].gather(coded[code]) for table, (key, _, _), code in zip(self._tables, SIDES, CODES)]
        return pl.DataFrame([*ids, coded[SCORE]])


def _side_table(registry: pl.DataFrame, side: str, key: str, dataset: Any) -> pl.DataFrame:
    """A :class:`PairCodes` table of one side: ``key`` (the id), ``_h``, ``_a``, ``_ok``."""
    entries = registry.filter(pl.col("side") == side).unique("id", keep="first", maintain_order=True)
    ok = pl.repeat(True, entries.height, eager=True)
    if dataset is not None:
        texts = dataset.query_texts(entries["id"]) if side == "q" else dataset.doc_texts(entries["id"])
        ok = (pl.Series(text_hash(texts), dtype=pl.String) == entries["hash"]).fill_null(False)
    return pl.DataFrame({key: entries["id"], "_h": entries["hash"], "_a": entries["adopted"], "_ok": ok},
                        schema={key: pl.String, "_h": pl.String, "_a": pl.Boolean, "_ok": pl.Boolean})


def pair_key() -> pl.Expr:
    """A pair's UInt64 key from its codes ``_q``, ``_d`` (each below 2^32)."""
    return (pl.col(CODES[0]).cast(pl.UInt64) * 2**32 + pl.col(CODES[1]).cast(pl.UInt64)).alias("_key")


def first_per_pair(coded: pl.DataFrame) -> pl.DataFrame:
    """The first row of each pair of ``coded`` (``_q``, ``_d``, ...), in order."""
    first = coded.select(pair_key().is_first_distinct()).to_series()
    return coded if first.all() else coded.filter(first)


def unscored(codes: PairCodes, coded: pl.DataFrame, pair_sets: Iterable[pl.DataFrame],
             qids: Iterable[str]) -> tuple[int, int]:
    """Of the pairs (qid, docid) of ``pair_sets`` whose qid is one of ``qids``, each counted once: how many
    the coded rows ``coded`` (``_q, _d``, of ``codes``) lack, out of how many; one pair set held at a time."""
    wanted = pl.DataFrame({QID: list(qids)}, schema={QID: pl.String})
    keys = [codes.keys(pairs.join(wanted, on=QID, how="semi")) for pairs in pair_sets]
    if not keys:
        return 0, 0
    registered = pl.concat(keys).unique()
    held = coded.select(pair_key()).to_series()
    return int((~registered.is_in(held.implode())).sum()), registered.len()


def read_shards(folder: Path, shards: Callable[[], list[Path]],
                transform: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """``transform`` of the rows of every shard ``shards()`` lists, applied a batch at a time, in shard order;
    unreadable shards set aside, the shards listed again if a compaction folded one away meanwhile."""
    for _ in range(READ_ATTEMPTS):
        parts = [read_shard(folder, path, transform) for path in shards()]
        if all(part is not None for part in parts):
            empty = transform(pl.DataFrame(schema=cache_files.ROW_SCHEMA))
            return pl.concat([empty, *(batch for part in parts for batch in part)])
    raise InputError(f"shards kept changing while being read ({READ_ATTEMPTS} tries)", path=folder)


def read_shard(folder: Path, path: Path,
               transform: Callable[[pl.DataFrame], pl.DataFrame]) -> list[pl.DataFrame] | None:
    """``transform`` of each batch of the shard ``path``; None if it vanished or was replaced while being read
    (a compaction: list the shards again). A shard this cannot read is read whole by
    :func:`distill.cache.files.read_all_rows`, which sets an unreadable one aside with a warning."""
    try:
        before = os.stat(path)
        parts = [transform(batch) for batch in batches(path)]
        after = os.stat(path)
    except FileNotFoundError:
        return None
    except (pl.exceptions.PolarsError, OSError, ValueError):
        rows = cache_files.read_all_rows(folder, [path])
        return None if rows is None else [transform(rows)]
    return parts if (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns) else None


def batches(path: Path) -> Iterator[pl.DataFrame]:
    """The rows of a shard as :func:`distill.cache.files.read_rows` gives them, ``BATCH_ROWS`` at a time (a
    slice of a Parquet scan decodes only the row groups it covers)."""
    scan = pl.scan_parquet(path, glob=False)
    names = scan.collect_schema().names()
    scan = scan.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in (QHASH, DHASH) if c not in names)
    scan = scan.select(list(cache_files.ROW_SCHEMA)).cast(cache_files.ROW_SCHEMA)
    total = scan.select(pl.len()).collect().item()
    for start in range(0, total, BATCH_ROWS):
        yield scan.slice(start, BATCH_ROWS).collect()


def candidate_sets(folder: Path, entries: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], pl.DataFrame]]:
    """Each manifest candidate entry whose file is readable, with its pairs, one file read at a time
    (:func:`distill.cache.files.read_candidates` reads them all first)."""
    for entry in entries:
        yield from cache_files.read_candidates(folder, [entry])
