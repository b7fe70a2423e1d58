"""A teacher cache that does not lie about torn files (issue 32): a torn shard, candidate file or manifest is named,
moved aside or rebuilt (``cache verify --repair``), and its pairs scored again."""

from __future__ import annotations

import json
import logging

import pytest
from test_cache import FakeTeacher, new_cache
from test_cache_trust import _scored, _shards, data  # noqa: F401  (data: a fixture)
from tiny import run_cli

from distill.cache.scoring import score_into_cache
from distill.cache.store import TeacherCache, read_scores
from distill.core.errors import InputError


def _tear(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not parquet at all")


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_a_torn_shard_is_named_moved_aside_and_its_pairs_scored_again(tmp_path, data, caplog, capsys, how):  # noqa: F811
    dataset, run = data
    full = tmp_path / "full"
    _scored(full, dataset, run)
    shards = _shards(tmp_path, dataset, run)
    _tear(shards[1], how)
    with caplog.at_level(logging.WARNING):
        assert TeacherCache.open(tmp_path / "c").info().rows == 32
    warnings = [r.getMessage() for r in caplog.records if shards[1].name in r.getMessage()]
    assert len(warnings) == 1 and "quarantine" in warnings[0]
    assert not shards[1].exists() and (tmp_path / "c" / "quarantine" / shards[1].name).exists()
    _tear(shards[2], how)  # the command says so too, and goes on
    code, out, err = run_cli(["cache", "info", tmp_path / "c"], capsys)
    assert code == 0 and "16 scores" in out and "unreadable shard" in err, err
    resumed = FakeTeacher()
    score_into_cache(resumed, dataset, run, new_cache(tmp_path / "c", dataset, resumed), show_progress=False)
    assert resumed.pairs == run.height - 16
    assert read_scores(tmp_path / "c")[0].sort("qid", "docid").equals(read_scores(full)[0].sort("qid", "docid"))


def test_a_torn_candidate_file_is_set_aside_and_rewritten(tmp_path, data, caplog):  # noqa: F811
    dataset, run = data
    teacher = FakeTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    cache.register_candidates(run, "bm25")
    score_into_cache(teacher, dataset, run, cache, show_progress=False)
    (candidates,) = (tmp_path / "c" / "candidates").glob("*.parquet")
    _tear(candidates, "truncated")
    with caplog.at_level(logging.WARNING):
        assert TeacherCache.open(tmp_path / "c").unscored(run["qid"]) == (0, 0)
    assert candidates.name in caplog.text
    TeacherCache.open(tmp_path / "c").register_candidates(run, "bm25")
    assert TeacherCache.open(tmp_path / "c").unscored(run["qid"]) == (0, run.height)


@pytest.mark.parametrize("field", ["teacher", "kind", "format"])
def test_a_manifest_missing_a_field_is_exit_2_naming_it(tmp_path, data, capsys, field):  # noqa: F811
    dataset, run = data
    _scored(tmp_path / "c", dataset, run.head(4))
    path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest[field]
    path.write_text(json.dumps(manifest))
    code, _, err = run_cli(["cache", "info", tmp_path / "c"], capsys)
    assert code == 2 and f"'{field}'" in err and "unexpected" not in err


@pytest.mark.parametrize("damage", ["empty", "truncated", "deleted"])
def test_verify_repair_rebuilds_a_lost_manifest_from_the_shards(tmp_path, data, capsys, damage):  # noqa: F811
    dataset, run = data
    teacher = FakeTeacher()
    cache = new_cache(tmp_path / "c", dataset, teacher)
    cache.register_candidates(run, "bm25")
    score_into_cache(teacher, dataset, run, cache, show_progress=False)
    scores, manifest = read_scores(tmp_path / "c")
    path = tmp_path / "c" / "manifest.json"
    if damage == "deleted":
        path.unlink()
    else:
        _tear(path, damage)
    code, _, err = run_cli(["cache", "info", tmp_path / "c"], capsys)
    assert code == 2 and "cache verify --repair" in err
    code, out, err = run_cli(["cache", "verify", tmp_path / "c"], capsys)
    assert code == 2 and "manifest.json" in out + err
    code, out, err = run_cli(["cache", "verify", tmp_path / "c", "--repair"], capsys)
    assert code == 0, err
    rebuilt_scores, rebuilt = read_scores(tmp_path / "c")
    assert rebuilt["teacher"] == manifest["teacher"] and rebuilt["corpus_hash"] == manifest["corpus_hash"]
    assert [c["hash"] for c in rebuilt["candidates"]] == [c["hash"] for c in manifest["candidates"]]
    assert rebuilt_scores.sort("qid", "docid").equals(scores.sort("qid", "docid"))
    assert run_cli(["cache", "verify", tmp_path / "c"], capsys)[0] == 0
    resumed = FakeTeacher()
    score_into_cache(resumed, dataset, run, new_cache(tmp_path / "c", dataset, resumed), show_progress=False)
    assert resumed.pairs == 0


def test_verify_names_a_torn_shard_and_repair_moves_it_aside(tmp_path, data, capsys):  # noqa: F811
    dataset, run = data
    shards = _shards(tmp_path, dataset, run)
    _tear(shards[0], "truncated")
    code, out, err = run_cli(["cache", "verify", tmp_path / "c"], capsys)
    assert code == 2 and shards[0].name in out
    assert shards[0].exists()  # verify alone changes nothing
    code, out, err = run_cli(["cache", "verify", tmp_path / "c", "--repair"], capsys)
    assert code == 0, err
    assert not shards[0].exists() and (tmp_path / "c" / "quarantine" / shards[0].name).exists()
    assert run_cli(["cache", "verify", tmp_path / "c"], capsys)[0] == 0
    assert read_scores(tmp_path / "c")[0].height == 32


def test_a_folder_with_shards_but_no_manifest_is_not_overwritten(tmp_path, data):  # noqa: F811
    dataset, run = data
    _scored(tmp_path / "c", dataset, run.head(4))
    (tmp_path / "c" / "manifest.json").unlink()
    with pytest.raises(InputError, match="verify --repair"):
        new_cache(tmp_path / "c", dataset, FakeTeacher())
