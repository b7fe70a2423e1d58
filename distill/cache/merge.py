"""``distill cache merge``: join caches of one teacher (e.g. the ``--shard i/N`` parts) into one."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from distill.cache.files import read_candidates
from distill.cache.store import TeacherCache
from distill.cache.texts import DHASH, QHASH, conflicts
from distill.core.errors import CacheMismatchError, InputError
from distill.core.schema import DOCID, QID


def merge(out: str | Path, sources: list[str | Path]) -> TeacherCache:
    """Join the caches ``sources`` of the same teacher into ``out`` (created, or added to). Each
    row keeps the text hashes it was scored from; caches that scored other texts for one id are
    refused, as mixing them would leave it unknown which score belongs to the current text."""
    if not sources:
        raise InputError("nothing to merge")
    opened = [TeacherCache.open(s) for s in sources]
    first = opened[0].manifest
    for cache in opened[1:]:
        cache.check(first["teacher"], first.get("corpus_hash"))
    target = TeacherCache.create_or_open(out, first["teacher"], first.get("corpus_hash"))
    caches = [*opened, target] if target.shard_paths() else opened
    texts = pl.concat([c.texts().select("side", "id", "hash") for c in caches])
    clash = conflicts(texts)
    if clash.height:
        side, id_ = clash.row(0)[:2]
        raise CacheMismatchError(f"the caches scored other texts for {'query' if side == 'q' else 'document'} "
                                 f"{id_!r} ({clash.height} id(s) in all); merge caches scored from the same texts",
                                 path=out)
    merged = pl.concat([c.valid_rows() for c in opened]).unique(subset=[QID, DOCID], keep="first",
                                                                maintain_order=True)
    fresh = merged.join(target.missing(merged.select(QID, DOCID, QHASH, DHASH)), on=[QID, DOCID], how="semi")
    if fresh.height:
        target.append(fresh)
    for cache in opened:
        for entry, pairs in read_candidates(cache.folder, cache.manifest.get("candidates", [])):
            target.register_candidates(pairs, entry.get("source", str(cache.folder)))
    target.compact()
    return target
