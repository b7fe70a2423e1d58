"""Which texts a cached score was computed from: per-query and per-document text hashes.

A score is the teacher's verdict on two *texts*, not on two ids: a query log that reuses ids,
a corrected query, regenerated pseudo-queries or an edited document give the same (qid, docid)
other texts. So every shard row records ``qhash`` and ``dhash``, hashes of the query and
document strings the teacher was given, and the cache keeps a *text registry*
(``texts.parquet``: ``side`` q/d, ``id``, ``hash``, ``adopted``) of the current text of each id.
A row counts only while its hashes are the registry's; registering texts that changed makes
the old rows stale, so their pairs are scored again (and compaction drops them).

Rows without hashes (a cache of format 1, or scores appended without texts) are taken as
computed from the first text the registry records for their id (``adopted``); once that text
changes, they are stale too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from distill.core.schema import DOCID, QID

QHASH, DHASH = "qhash", "dhash"
REGISTRY = "texts.parquet"
REGISTRY_SCHEMA = {"side": pl.String, "id": pl.String, "hash": pl.String, "adopted": pl.Boolean}
SIDES = ((QID, QHASH, "q"), (DOCID, DHASH, "d"))


def text_hash(texts: list[str | None]) -> list[str | None]:
    """A 64-bit BLAKE2b hex digest per text (None stays None); the same on every machine and version."""
    return [None if t is None else hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
            for t in texts]


def with_text_hashes(pairs: pl.DataFrame, query_texts: list[str | None], doc_texts: list[str | None]) -> pl.DataFrame:
    """``pairs`` with the ``qhash``, ``dhash`` of the texts given row by row (those scored)."""
    return pairs.with_columns(pl.Series(QHASH, text_hash(query_texts), dtype=pl.String),
                              pl.Series(DHASH, text_hash(doc_texts), dtype=pl.String))


def text_hashes(dataset: Any, pairs: pl.DataFrame) -> pl.DataFrame:
    """The unique (qid, docid) of ``pairs`` with the hashes of ``dataset``'s texts for them (each
    text hashed once); ``dataset`` has ``query_texts`` and ``doc_texts`` (a :class:`distill.data.beir.Dataset`)."""
    pairs = pairs.select(QID, DOCID).unique(maintain_order=True)
    qids, docids = pairs[QID].unique(maintain_order=True), pairs[DOCID].unique(maintain_order=True)
    queries = pl.DataFrame({QID: qids, QHASH: pl.Series(text_hash(dataset.query_texts(qids)), dtype=pl.String)})
    docs = pl.DataFrame({DOCID: docids, DHASH: pl.Series(text_hash(dataset.doc_texts(docids)), dtype=pl.String)})
    return pairs.join(queries, on=QID, how="left", maintain_order="left").join(
        docs, on=DOCID, how="left", maintain_order="left")


def empty_registry() -> pl.DataFrame:
    return pl.DataFrame(schema=REGISTRY_SCHEMA)


def registry_of(hashed: pl.DataFrame) -> pl.DataFrame:
    """The (side, id, hash) entries ``hashed`` (qid, docid, qhash, dhash) names, nulls left out."""
    parts = [hashed.select(pl.lit(side).alias("side"), pl.col(key).alias("id"), pl.col(col).alias("hash"))
             .drop_nulls().unique() for key, col, side in SIDES]
    return pl.concat(parts).with_columns(pl.lit(True).alias("adopted")).cast(REGISTRY_SCHEMA)


def conflicts(entries: pl.DataFrame) -> pl.DataFrame:
    """The (side, id) that ``entries`` gives more than one hash."""
    return entries.group_by("side", "id").agg(pl.col("hash").n_unique().alias("n")).filter(pl.col("n") > 1)


def update_registry(registry: pl.DataFrame, entries: pl.DataFrame, *,
                    replace: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    """``registry`` with ``entries`` (side, id, hash) added, and how many ids of each side changed text.

    A new id is ``adopted`` (rows without hashes count as its text); with ``replace`` an id whose
    text changed takes the new hash and loses ``adopted``, without it the registry's text stays.
    """
    entries = entries.select("side", "id", "hash").unique(subset=["side", "id"], keep="first")
    joined = entries.join(registry, on=["side", "id"], how="left", suffix="_old")
    new = joined.filter(pl.col("hash_old").is_null()).select("side", "id", "hash", pl.lit(True).alias("adopted"))
    changed = joined.filter(pl.col("hash_old").is_not_null() & (pl.col("hash") != pl.col("hash_old")))
    counts = {side: changed.filter(pl.col("side") == side).height for _, _, side in SIDES}
    if not replace or not changed.height:
        changed = changed.clear()
    kept = registry.join(changed.select("side", "id"), on=["side", "id"], how="anti")
    updated = changed.select("side", "id", "hash", pl.lit(False).alias("adopted"))
    return pl.concat([kept, new.cast(REGISTRY_SCHEMA), updated.cast(REGISTRY_SCHEMA)]), counts


def fill_hashes(rows: pl.DataFrame, registry: pl.DataFrame) -> pl.DataFrame:
    """``rows`` whose missing ``qhash``/``dhash`` take the registry's current hash of their id (appending
    scores computed from the current texts)."""
    for key, col, side in SIDES:
        current = registry.filter(pl.col("side") == side).select(pl.col("id").alias(key), pl.col("hash").alias("_h"))
        rows = rows.join(current, on=key, how="left", maintain_order="left").with_columns(
            pl.coalesce(col, "_h").alias(col)).drop("_h")
    return rows


def effective(rows: pl.DataFrame, registry: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``qhash``/``dhash`` as they count now, and ``valid`` (computed from the current texts).

    A missing hash becomes the registry's where the id's text was adopted, "" (stale) where the
    registry's text replaced the adopted one, and stays null where the registry has no text for
    the id. A row is valid when both its hashes are the registry's, or both its ids have no text
    recorded at all and the row none either.
    """
    valid = pl.lit(True)
    for key, col, side in SIDES:
        current = registry.filter(pl.col("side") == side).select(
            pl.col("id").alias(key), pl.col("hash").alias("_h"), pl.col("adopted").alias("_a"))
        rows = rows.join(current, on=key, how="left", maintain_order="left")
        filled = pl.when(pl.col(col).is_not_null()).then(pl.col(col)).when(pl.col("_h").is_null()).then(None) \
            .when(pl.col("_a")).then(pl.col("_h")).otherwise(pl.lit(""))
        rows = rows.with_columns(filled.alias(col), (pl.col("_h").is_null() & pl.col(col).is_null()).alias("_none"))
        valid = valid & ((pl.col(col) == pl.col("_h")).fill_null(False) | pl.col("_none"))
        rows = rows.with_columns(valid.alias("valid")).drop("_h", "_a", "_none")
        valid = pl.col("valid")
    return rows


def present(hashed: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """The pairs of ``hashed`` (qid, docid, qhash, dhash) that a row of ``rows`` (effective) scored
    from these very texts; a row of unknown texts (null hash) counts as such."""
    joined = hashed.select(QID, DOCID, QHASH, DHASH).join(
        rows.select(QID, DOCID, pl.col(QHASH).alias("_q"), pl.col(DHASH).alias("_d")), on=[QID, DOCID], how="inner")
    same = (pl.col("_q").is_null() | (pl.col("_q") == pl.col(QHASH)).fill_null(False)) & \
        (pl.col("_d").is_null() | (pl.col("_d") == pl.col(DHASH)).fill_null(False))
    return joined.filter(same).select(QID, DOCID).unique()


def rebuild_registry(rows: pl.DataFrame) -> pl.DataFrame:
    """A registry from shard rows alone: each id with exactly one recorded hash keeps it; an id
    recorded with several texts gets none, so its rows wait for the next registration."""
    entries = pl.concat([rows.select(pl.lit(side).alias("side"), pl.col(key).alias("id"), pl.col(col).alias("hash"))
                         .drop_nulls().unique() for key, col, side in SIDES])
    ambiguous = conflicts(entries).select("side", "id")
    return entries.join(ambiguous, on=["side", "id"], how="anti").with_columns(
        pl.lit(True).alias("adopted")).cast(REGISTRY_SCHEMA)
