"""Reading a teacher cache in bounded memory (issue 36): the batched, integer-coded read returns what the
former whole-frame read did, row for row, on caches with edited texts, duplicates and rows of unknown texts."""

from __future__ import annotations

import os
import shutil

import numpy as np
import polars as pl
import pytest

from distill.cache import files as cache_files
from distill.cache import reading
from distill.cache import texts as cache_texts
from distill.cache.store import TeacherCache
from distill.core.schema import DOCID, QID, SCORE, SCORES_SCHEMA

TEACHER = {"kind": "fake", "model": "m"}


class Texts:
    """A dataset's ``query_texts``/``doc_texts`` from dicts (None for an id it lacks)."""

    def __init__(self, queries: dict[str, str], docs: dict[str, str]) -> None:
        self.queries, self.docs = queries, docs

    def query_texts(self, qids):
        return [self.queries.get(q) for q in qids]

    def doc_texts(self, docids):
        return [self.docs.get(d) for d in docids]


def _reference_scores(cache: TeacherCache, dataset) -> pl.DataFrame:
    """``TeacherCache.scores`` as it was computed before the batched read: every row at once, joins and a
    unique on the two string columns (commit 1c4b51f)."""
    rows = cache_files.read_all_rows(cache.folder, cache.shard_paths())
    rows = cache_texts.effective(rows, cache.texts()).filter("valid").drop("valid")
    if dataset is not None:
        held = cache_texts.present(cache_texts.text_hashes(dataset, rows), rows)
        rows = rows.join(held, on=[QID, DOCID], how="semi", maintain_order="left")
    return rows.select(list(SCORES_SCHEMA)).unique(subset=[QID, DOCID], keep="first", maintain_order=True)


def _texts(rng, ids: list[str], version: int) -> dict[str, str]:
    return {i: f"{i} text {version}" if rng.random() < 0.7 else f"{i} text 0" for i in ids}


def _batch(rng, qids, docids, n) -> pl.DataFrame:
    return pl.DataFrame({QID: rng.choice(qids, n).tolist(), DOCID: rng.choice(docids, n).tolist(),
                         SCORE: rng.normal(size=n).astype(np.float32)})


def _messy_cache(folder, seed: int) -> tuple[TeacherCache, list[Texts]]:
    """A cache of several shards: pairs scored twice (other scores), texts edited after scoring (stale rows),
    rows of ids never registered (null hashes), a format-1 shard without hash columns; and datasets whose
    texts are the first, the edited, a mix of both, or lack some ids."""
    rng = np.random.default_rng(seed)
    qids, docids = [f"q{i}" for i in range(6)], [f"d{i}" for i in range(12)]
    first = Texts({q: f"{q} text 0" for q in qids}, {d: f"{d} text 0" for d in docids})
    edited = Texts(_texts(rng, qids, 1), _texts(rng, docids, 1))
    cache = TeacherCache.create_or_open(folder, TEACHER, None)

    def scored(texts, n):
        pairs = _batch(rng, qids, docids, n)
        return cache_texts.with_text_hashes(pairs, texts.query_texts(pairs[QID]), texts.doc_texts(pairs[DOCID]))

    cache.register_candidates(scored(first, 40), "first")
    for _ in range(3):
        cache.append(scored(first, 30))
    cache.append(_batch(rng, ["qx", "qy", *qids[:2]], ["dx", *docids[:3]], 20))  # no hashes: unknown or current
    old = _batch(rng, qids, docids, 25)
    old.write_parquet(folder / "shards" / "part-format1.parquet")  # no hash columns at all
    cache.register_texts(scored(edited, 60))  # edited texts: rows of the first ones go stale
    cache.append(scored(edited, 30))
    cache.append(scored(first, 10))  # scored from texts no longer current
    cache.register_candidates(scored(edited, 40), "edited")
    mixed = Texts({**first.queries, **dict(list(edited.queries.items())[:3])}, {**edited.docs, "d0": "d0 text 0"})
    partial = Texts(dict(list(edited.queries.items())[:4]), dict(list(edited.docs.items())[2:]))
    return cache, [first, edited, mixed, partial]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch_rows", [7, 1 << 18])
@pytest.mark.parametrize("registry", ["kept", "lost"])
def test_the_batched_coded_read_equals_the_whole_frame_read(tmp_path, monkeypatch, seed, batch_rows, registry):
    """Also with the text registry lost: rebuilt from the shards, it leaves out the ids scored from several
    texts, so rows with a hash of an id the registry lacks do not count."""
    monkeypatch.setattr(reading, "BATCH_ROWS", batch_rows)
    cache, datasets = _messy_cache(tmp_path / "c", seed)
    if registry == "lost":
        (tmp_path / "c" / cache_texts.REGISTRY).unlink()
    opened = TeacherCache.open(tmp_path / "c")
    for dataset in [None, *datasets]:
        got, expected = opened.scores(dataset), _reference_scores(opened, dataset)
        assert got.schema == expected.schema and got.equals(expected)  # same rows, same order
        registered = pl.concat(frame for _, frame in cache_files.read_candidates(opened.folder,
                                                                                 opened.manifest["candidates"]))
        registered = registered.unique()
        lacking = registered.join(expected, on=[QID, DOCID], how="anti").height
        assert opened.unscored(registered[QID], dataset=dataset) == (lacking, registered.height)
        both, counts = opened.scores_and_unscored(registered[QID], dataset)
        assert both.equals(expected) and counts == (lacking, registered.height)
    info, every = opened.info(), _reference_scores(opened, None)
    assert (info.rows, info.queries) == (every.height, every[QID].n_unique())
    for entry, pairs in cache_files.read_candidates(opened.folder, opened.manifest["candidates"]):
        (found,) = [c for c in info.coverage if c["hash"] == entry["hash"]]
        assert found["scored"] == pairs.join(every, on=[QID, DOCID], how="semi").height


def test_a_shard_replaced_while_being_read_is_read_again(tmp_path, monkeypatch):
    """A compaction that rewrites a shard under its own name between two batches: the reader starts over
    rather than mixing the two files' rows."""
    monkeypatch.setattr(reading, "BATCH_ROWS", 5)
    pairs = pl.DataFrame({QID: [f"q{i // 8}" for i in range(40)], DOCID: [f"d{i}" for i in range(40)],
                          SCORE: np.arange(40, dtype=np.float32)})
    TeacherCache.create_or_open(tmp_path / "c", TEACHER, None).append(pairs)
    batches, replaced = reading.batches, []

    def replace_after_the_first_batch(path):
        for i, batch in enumerate(batches(path)):
            if i == 1 and not replaced:
                replaced.append(path)
                rows = pl.read_parquet(path).reverse().with_columns(-pl.col(SCORE))
                rows.write_parquet(path.with_suffix(".tmp"))
                os.replace(path.with_suffix(".tmp"), path)
            yield batch

    monkeypatch.setattr(reading, "batches", replace_after_the_first_batch)
    got = TeacherCache.open(tmp_path / "c").scores()
    assert replaced and got.equals(pairs.reverse().with_columns(-pl.col(SCORE)))


def test_read_shard_says_so_when_its_file_was_replaced_even_if_every_batch_read(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "BATCH_ROWS", 5)
    path = tmp_path / "part-x.parquet"
    pl.DataFrame({QID: ["q"] * 40, DOCID: [f"d{i}" for i in range(40)], SCORE: [0.5] * 40}).write_parquet(path)

    def replacing(batch):  # the same bytes under a new inode: every batch still decodes
        shutil.copyfile(path, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        return batch

    assert reading.read_shard(tmp_path, path, replacing) is None
    assert sum(batch.height for batch in reading.read_shard(tmp_path, path, lambda batch: batch)) == 40


def test_an_unreadable_shard_is_set_aside_by_the_batched_read(tmp_path):
    cache, _ = _messy_cache(tmp_path / "c", 1)
    torn = cache.shard_paths()[0]
    torn.write_bytes(torn.read_bytes()[:40])
    assert TeacherCache.open(tmp_path / "c").scores().height > 0
    assert not torn.exists() and (tmp_path / "c" / "quarantine" / torn.name).exists()
