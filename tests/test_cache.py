"""The teacher cache: exactly-once scoring, resume after a crash, fingerprints, shards."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from distill.cache.scoring import parse_shard, score_into_cache
from distill.cache.store import TeacherCache, merge_caches, read_scores
from distill.core.errors import CacheMismatchError, InputError
from distill.core.manifest import frame_hash
from distill.data.beir import load_beir
from distill.data.bm25 import bm25_run


class FakeTeacher:
    """Scores from a hash of the texts; counts pairs scored; can fail after some calls."""

    def __init__(self, name: str = "fake", fail_after_calls: int | None = None) -> None:
        self.name = name
        self.calls = 0
        self.pairs = 0
        self.fail_after_calls = fail_after_calls

    def fingerprint(self) -> dict:
        return {"kind": "fake", "model": self.name}

    def score(self, queries, docs, progress=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.pairs += len(queries)
        out = np.array([zlib.crc32(f"{q}|{d}".encode()) / 2**32 for q, d in zip(queries, docs)], dtype=np.float32)
        if progress:
            progress(len(queries))
        return out


@pytest.fixture(scope="module")
def data(tiny_beir):
    dataset = load_beir(tiny_beir, "train")
    return dataset, bm25_run(dataset, 10)


def new_cache(path, dataset, teacher):
    """A new (or the existing) cache at ``path`` for ``teacher`` over ``dataset``'s corpus."""
    return TeacherCache.create_or_open(path, teacher.fingerprint(), frame_hash(dataset.corpus))


def _sorted(frame):
    return frame.sort(["qid", "docid"])


def test_scores_every_pair_once_and_rerun_makes_no_model_calls(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher()
    stats = score_into_cache(teacher, dataset, run, new_cache(tmp_path / "c", dataset, teacher),
                             flush_pairs=16, show_progress=False)
    assert stats.scored == run.height == teacher.pairs
    again = FakeTeacher()
    stats2 = score_into_cache(again, dataset, run, new_cache(tmp_path / "c", dataset, again), show_progress=False)
    assert again.calls == 0 and stats2.scored == 0 and stats2.already_cached == run.height
    scores, manifest = read_scores(tmp_path / "c")
    assert scores.height == run.height
    assert scores.select("qid", "docid").is_duplicated().sum() == 0
    assert manifest["teacher"] == teacher.fingerprint()


def test_a_cache_in_a_folder_named_like_a_glob_pattern_reads_its_shards(tmp_path, data):
    """polars reads a parquet path as a glob pattern unless told otherwise: a folder named ``run[1]``
    must not make good shards unreadable (they would be set aside as torn)."""
    dataset, run = data
    teacher = FakeTeacher()
    folder = tmp_path / "run[1]"
    score_into_cache(teacher, dataset, run, new_cache(folder, dataset, teacher), flush_pairs=16, show_progress=False)
    scores = TeacherCache.open(folder).scores()
    assert scores.height == run.height and not (folder / "quarantine").exists()


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, data):
    dataset, run = data
    full = FakeTeacher()
    score_into_cache(full, dataset, run, new_cache(tmp_path / "full", dataset, full), flush_pairs=16,
                     show_progress=False)

    crashing = FakeTeacher(fail_after_calls=3)
    cache = new_cache(tmp_path / "resumed", dataset, crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        score_into_cache(crashing, dataset, run, cache, flush_pairs=16, show_progress=False)
    partial = cache.scores().height
    assert partial == 3 * 16  # three finished batches kept, the one in flight lost

    resumed = FakeTeacher()
    stats = score_into_cache(resumed, dataset, run, new_cache(tmp_path / "resumed", dataset, resumed),
                             flush_pairs=16, show_progress=False)
    assert resumed.pairs == run.height - partial == stats.scored
    a, _ = read_scores(tmp_path / "full")
    b, _ = read_scores(tmp_path / "resumed")
    assert _sorted(a).equals(_sorted(b))
    assert len(TeacherCache.open(tmp_path / "resumed").shard_paths()) == 1


def test_other_teacher_is_refused(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher("a")
    score_into_cache(teacher, dataset, run.head(5), new_cache(tmp_path / "c", dataset, teacher), show_progress=False)
    with pytest.raises(CacheMismatchError, match="another teacher"):
        new_cache(tmp_path / "c", dataset, FakeTeacher("b"))
    with pytest.raises(CacheMismatchError, match="another corpus"):
        TeacherCache.create_or_open(tmp_path / "c", teacher.fingerprint(), "0000")


def test_shards_then_merge_equal_a_single_run(tmp_path, data):
    dataset, run = data
    single = FakeTeacher()
    score_into_cache(single, dataset, run, new_cache(tmp_path / "single", dataset, single), show_progress=False)
    parts, total = [], 0
    for i in range(3):
        teacher = FakeTeacher()
        stats = score_into_cache(teacher, dataset, run, new_cache(tmp_path / f"part{i}", dataset, teacher),
                                 shard=(i, 3), show_progress=False)
        total += stats.scored
        assert 0 < stats.scored < run.height
        parts.append(tmp_path / f"part{i}")
    assert total == run.height  # the parts are disjoint and cover everything
    merge_caches(tmp_path / "merged", parts)
    a, _ = read_scores(tmp_path / "single")
    b, _ = read_scores(tmp_path / "merged")
    assert _sorted(a).equals(_sorted(b))


def test_merge_refuses_mixed_teachers(tmp_path, data):
    dataset, run = data
    for name in ("a", "b"):
        t = FakeTeacher(name)
        score_into_cache(t, dataset, run.head(4), new_cache(tmp_path / name, dataset, t), show_progress=False)
    with pytest.raises(CacheMismatchError):
        merge_caches(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "m").exists()


def test_non_finite_scores_are_refused_and_nothing_written(tmp_path, data):
    dataset, run = data

    class NaNTeacher(FakeTeacher):
        def score(self, queries, docs, progress=None):
            out = super().score(queries, docs, progress)
            out[0] = np.nan
            return out

    teacher = NaNTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    with pytest.raises(InputError, match="non-finite"):
        score_into_cache(teacher, dataset, run, cache, show_progress=False)
    assert cache.scores().height == 0
    assert not (tmp_path / "c").exists()  # a new cache appears only with its first shard


def test_info_reports_coverage(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    cache.register_candidates(run, "bm25")
    score_into_cache(teacher, dataset, run, cache, shard=(0, 2), show_progress=False)
    info = TeacherCache.open(tmp_path / "c").info()
    assert info.rows == cache.scores().height
    (entry,) = info.coverage
    assert entry["pairs"] == run.height and 0 < entry["coverage"] < 1


def test_unscored_counts_the_registered_pairs_a_stopped_run_left(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    cache.register_candidates(run, "bm25")
    first, second = sorted(run["qid"].unique())[:2]
    score_into_cache(teacher, dataset, run.filter(run["qid"] == first), cache, show_progress=False)
    per_query = run.group_by("qid").len().sort("qid")
    n_second = per_query.filter(per_query["qid"] == second)["len"][0]
    assert cache.unscored([first]) == (0, run.filter(run["qid"] == first).height)
    assert cache.unscored([first, second]) == (n_second, run.filter(run["qid"].is_in([first, second])).height)
    assert cache.unscored(["no-such-query"]) == (0, 0)


@pytest.mark.parametrize("text", ["2", "3/3", "-1/2", "a/b"])
def test_bad_shard_spec(text):
    from distill.core.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_shard(text)


def test_open_non_cache_folder(tmp_path):
    with pytest.raises(InputError, match="not a teacher cache"):
        TeacherCache.open(tmp_path)


def test_shards_are_named_by_their_keys_so_a_repeated_batch_is_not_duplicated(tmp_path, data):
    dataset, run = data
    teacher = FakeTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    batch = run.head(8).select("qid", "docid").with_columns(score=np.arange(8, dtype=np.float32))
    first = cache.append(batch)
    assert cache.append(batch.reverse()) == first  # same keys in another order: same shard
    assert cache.shard_paths() == [first]
    cache.append(batch.head(3))  # a shard whose keys another one covers: compaction keeps the larger
    cache.compact()
    assert cache.shard_paths() == [first]
    assert cache.scores().sort("qid", "docid").equals(batch.sort("qid", "docid"))
