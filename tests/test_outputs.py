"""Outputs: distill never destroys what it did not write, refuses to write over its own inputs, records
paths that resolve from anywhere, and leaves nothing half-written when the disk is full."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest
from tiny import run_cli, snapshot

NO_TRAINING = "training started"  # what a stubbed trainer raises: the refusal must come before it


def _users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my own notes\n")
    return path


def _beir(tmp_path: Path, tiny_beir: Path) -> Path:
    """A copy of the tiny BEIR folder a test may lose without harming the others."""
    return Path(shutil.copytree(tiny_beir, tmp_path / "beir"))


def _run(beir: Path, tmp_path: Path, capsys) -> Path:
    code, _, err = run_cli(["candidates", "--data", beir, "--split", "test", "--k", 10,
                            "--out", tmp_path / "bm25.trec"], capsys)
    assert code == 0, err
    return tmp_path / "bm25.trec"


def _evaluate(beir: Path, run: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    code, _, err = run_cli(["evaluate", "--data", beir, "--run", run, "--ranker", "bm25=bm25", "--out", out,
                            *extra], capsys)
    return code, err


def _one_error_line(err: str) -> bool:
    """The failure is one line (after any progress logged before it)."""
    lines = err.strip().splitlines()
    return [line for line in lines if line.startswith("error:")] == lines[-1:]


def _no_temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")]


def test_evaluate_refuses_a_folder_of_the_users_files(tmp_path, tiny_beir, capsys):
    beir = _beir(tmp_path, tiny_beir)
    run = _run(beir, tmp_path, capsys)
    mine = _users_folder(tmp_path / "results")
    code, err = _evaluate(beir, run, mine, capsys)
    assert code == 2, err
    assert "--overwrite" in err and str(mine) in err and _one_error_line(err)
    assert (mine / "notes.txt").read_text() == "my own notes\n" and sorted(os.listdir(mine)) == ["notes.txt"]
    code, err = _evaluate(beir, run, mine, capsys, "--overwrite")  # asked for: replaced
    assert code == 0, err
    assert not (mine / "notes.txt").exists() and (mine / "distill.json").is_file()


def test_a_folder_output_replaces_its_own_kind_or_an_empty_folder_only(tmp_path, tiny_beir, capsys):
    from distill.core.manifest import write_manifest

    beir = _beir(tmp_path, tiny_beir)
    run = _run(beir, tmp_path, capsys)
    out = tmp_path / "eval"
    assert _evaluate(beir, run, out, capsys)[0] == 0
    assert _evaluate(beir, run, out, capsys)[0] == 0  # its own earlier output: replaced
    (tmp_path / "empty").mkdir()
    assert _evaluate(beir, run, tmp_path / "empty", capsys)[0] == 0
    teacher = tmp_path / "teacher"
    write_manifest(teacher, "teacher", {})
    (teacher / "model.safetensors").write_bytes(b"weights")
    code, err = _evaluate(beir, run, teacher, capsys)  # distill's, but a model, not an evaluation
    assert code == 2 and "teacher" in err and (teacher / "model.safetensors").is_file()
    (tmp_path / "a_file").write_text("x")
    code, err = _evaluate(beir, run, tmp_path / "a_file", capsys)
    assert code == 2 and (tmp_path / "a_file").read_text() == "x"


def test_split_view_refuses_an_output_that_is_or_is_inside_its_dataset(tmp_path, tiny_beir, capsys):
    beir = _beir(tmp_path, tiny_beir)
    before = snapshot(beir)
    for out in (beir, beir / "view", beir / "qrels"):
        code, _, err = run_cli(["split-view", "--data", beir, "--out", out, "--overwrite"], capsys)
        assert code == 2, (out, err)
        assert "input" in err and _one_error_line(err)
    assert snapshot(beir) == before and not (beir / "corpus.jsonl").is_symlink()
    code, _, err = run_cli(["split-view", "--data", beir / "qrels" / "..", "--out", tmp_path], capsys)
    assert code == 2, err  # an output that contains the dataset
    code, _, err = run_cli(["split-view", "--data", beir, "--out", tmp_path / "view"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["split-view", "--data", beir, "--out", tmp_path / "view"], capsys)
    assert code == 0, err  # a rerun reuses it


def test_a_file_output_never_replaces_the_commands_own_input(tmp_path, tiny_beir, capsys):
    beir = _beir(tmp_path, tiny_beir)
    before = snapshot(beir)
    code, _, err = run_cli(["candidates", "--data", beir, "--out", beir / "corpus.jsonl"], capsys)
    assert code == 2 and "input" in err, err
    code, _, err = run_cli(["candidates", "--data", beir, "--out", beir / "qrels" / "new.trec"], capsys)
    assert code == 2, err  # nothing is written inside an input dataset
    queries = tmp_path / "log.tsv"
    queries.write_text("x1\tsome words about things\n")
    code, _, err = run_cli(["candidates", "--data", beir, "--queries", queries, "--out", queries], capsys)
    assert code == 2 and queries.read_text() == "x1\tsome words about things\n", err
    code, _, err = run_cli(["pseudo-queries", "--data", beir, "--out", beir / "queries.jsonl"], capsys)
    assert code == 2, err
    assert snapshot(beir) == before
    (tmp_path / "old.trec").write_text("stale\n")
    code, _, err = run_cli(["candidates", "--data", beir, "--out", tmp_path / "old.trec"], capsys)
    assert code == 0 and "stale" not in (tmp_path / "old.trec").read_text(), err  # any other file: replaced


def test_every_folder_writing_command_refuses_before_it_works(tmp_path, tiny_beir, capsys, monkeypatch):
    """train-teacher, train-student, select-student, export, demo and report stop at once, before any training."""
    import students.train
    import teachers.train
    from distill.core.manifest import write_manifest

    def trainer(*args, **kwargs):
        raise AssertionError(NO_TRAINING)

    monkeypatch.setattr(teachers.train, "train_teacher", trainer)
    monkeypatch.setattr(students.train, "train_student", trainer)
    beir = _beir(tmp_path, tiny_beir)
    mine = _users_folder(tmp_path / "mine")
    student = tmp_path / "student"
    write_manifest(student, "cross-encoder-student", {"x": 1}, data={"path": str(beir), "split": "train"},
                   validation={"value": 0.5, "metric": "nDCG@10"})
    commands = [
        ["train-teacher", "--data", beir, "--init", "none", "--out", mine],
        ["train-student", "--student", "lightgbm", "--cache", tmp_path / "cache", "--data", beir, "--out", mine],
        ["select-student", student, "--out", mine],
        ["export", student, "--out", mine],
        ["demo", "--out", mine],
        ["report", "--eval", tmp_path / "eval", "--out", student],  # a report never lands in a model folder
    ]
    for args in commands:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and "--overwrite" in err and NO_TRAINING not in err, (args, err)
    assert sorted(os.listdir(mine)) == ["notes.txt"] and sorted(os.listdir(student)) == ["distill.json"]
    code, _, err = run_cli(["select-student", student, "--out", mine, "--overwrite"], capsys)
    assert code == 0 and (mine / "distill.json").is_file() and not (mine / "notes.txt").exists(), err


def test_the_library_functions_protect_the_same_way(tmp_path, tiny_beir):
    from distill.app.pipeline import split_view
    from distill.core.errors import InputError
    from distill.data.synthetic import make_synthetic_beir

    mine = _users_folder(tmp_path / "mine")
    with pytest.raises(InputError, match="overwrite"):
        make_synthetic_beir(mine, n_topics=2)
    assert (mine / "notes.txt").exists()
    make_synthetic_beir(mine, n_topics=2, overwrite=True)
    assert not (mine / "notes.txt").exists() and (mine / "corpus.jsonl").is_file()
    make_synthetic_beir(mine, n_topics=2)  # its own output: replaced without asking
    beir = _beir(tmp_path, tiny_beir)
    with pytest.raises(InputError, match="input"):
        split_view(beir, beir, overwrite=True)


def test_a_model_folder_finds_its_training_data_from_any_directory(tmp_path, tiny_beir, tiny_cross_encoder,
                                                                    capsys, monkeypatch):
    """`distill export demo_out/models/ce_student` run from elsewhere found no "demo_out/data" before."""
    from distill.cache.store import TeacherCache
    from distill.data.runs import read_run
    from students.export import ExportConfig, _source_manifest, _training_data

    work = tmp_path / "work"
    work.mkdir()
    _beir(work, tiny_beir)
    monkeypatch.chdir(work)

    cache = TeacherCache.create_or_open(Path("cache"), {"kind": "fake"}, None)
    code, _, err = run_cli(["candidates", "--data", "beir", "--split", "train", "--k", 6, "--out", "train.trec"],
                           capsys)
    assert code == 0, err
    train_run = read_run(work / "train.trec")
    cache.append(train_run.select("qid", "docid", pl.col("score").cast(pl.Float32)))
    code, _, err = run_cli(["train-student", "--student", "cross-encoder", "--init", tiny_cross_encoder,
                            "--loss", "MarginMSE", "--cache", "cache", "--data", "beir", "--split", "train",
                            "--negatives", 3, "--max-length", 32, "--out", "models/ce"], capsys)
    assert code == 0, err
    data = json.loads((work / "models" / "ce" / "distill.json").read_text())["data"]
    assert Path(data["path"]).is_absolute() and data["relative_path"] == os.path.join("..", "..", "beir")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = work / "models" / "ce"
    assert _training_data(model, _source_manifest(model), ExportConfig()).qrels.height > 0
    moved = Path(shutil.move(str(work), tmp_path / "moved"))  # the whole tree moved: relative to the folder
    model = moved / "models" / "ce"
    assert _training_data(model, _source_manifest(model), ExportConfig()).qrels.height > 0


def test_an_older_manifests_cwd_relative_path_still_resolves_from_elsewhere(tmp_path, tiny_beir, monkeypatch):
    from distill.core.manifest import write_manifest
    from students.export import ExportConfig, _source_manifest, _training_data

    demo = tmp_path / "demo_out"
    _beir(demo, tiny_beir)
    model = demo / "models" / "ce_student"
    write_manifest(model, "cross-encoder-student", {}, data={"path": "demo_out/beir", "split": "train"})
    monkeypatch.chdir(model)
    assert _training_data(model, _source_manifest(model), ExportConfig()).qrels.height > 0


def _spec(path: Path, stages: list[tuple[str, str]]) -> Path:
    body = {"format": "distill-cascade/1", "stages": [{"name": n, "ranker": r, "cutoff": None} for n, r in stages],
            "costs": {}, "budget_ms": None, "provenance": {}}
    path.write_text(json.dumps(body))
    return path


def test_a_cascade_spec_resolves_its_rankers_against_its_own_folder(tmp_path, monkeypatch, tiny_beir, capsys):
    from distill.cascade.model import Cascade

    folder = tmp_path / "specs"
    folder.mkdir()
    beir = _beir(tmp_path, tiny_beir)
    shutil.copy(_run(beir, tmp_path, capsys), folder / "other.trec")
    spec = _spec(folder / "cascade.json", [("bm25", "bm25"), ("other", "other.trec")])
    monkeypatch.chdir(tmp_path)
    cascade = Cascade.read_spec(spec)
    assert [s.name for s in cascade.stages] == ["bm25", "other"]
    cascade.write_spec(tmp_path / "copy" / "spec.json")  # written again elsewhere: still resolves there
    written = json.loads((tmp_path / "copy" / "spec.json").read_text())["stages"][1]
    assert written["ranker"] == str(folder / "other.trec")  # absolute: found from anywhere
    assert written["ranker_relative"] == os.path.join("..", "specs", "other.trec")  # and from its folder
    monkeypatch.chdir(folder)
    assert len(Cascade.read_spec(tmp_path / "copy" / "spec.json").stages) == 2
    moved = Path(shutil.move(str(tmp_path), tmp_path.with_name(tmp_path.name + "_moved")))
    monkeypatch.chdir(moved)  # the whole tree moved: the absolute path is gone, the relative one remains
    assert Cascade.read_spec(moved / "copy" / "spec.json").stages[1].spec == str(moved / "specs" / "other.trec")


def test_an_older_spec_with_paths_from_its_runs_directory_still_loads(tmp_path, monkeypatch, tiny_beir, capsys):
    from distill.cascade.model import Cascade

    beir = _beir(tmp_path, tiny_beir)
    (tmp_path / "demo_out" / "runs").mkdir(parents=True)
    shutil.copy(_run(beir, tmp_path, capsys), tmp_path / "demo_out" / "runs" / "other.trec")
    spec = _spec(tmp_path / "demo_out" / "cascade.json", [("bm25", "bm25"), ("other", "demo_out/runs/other.trec")])
    monkeypatch.chdir(beir)  # neither the run's directory nor the spec's
    assert len(Cascade.read_spec(spec).stages) == 2


def test_a_spec_that_names_itself_is_bad_input(tmp_path, tiny_beir, capsys):
    beir = _beir(tmp_path, tiny_beir)
    run = _run(beir, tmp_path, capsys)
    itself = _spec(tmp_path / "self.json", [("bm25", "bm25"), ("again", "self.json")])
    _spec(tmp_path / "a.json", [("bm25", "bm25"), ("b", "b.json")])
    _spec(tmp_path / "b.json", [("bm25", "bm25"), ("a", "a.json")])
    for spec in (itself, tmp_path / "a.json"):
        code, _, err = run_cli(["cascade", "run", spec, "--data", beir, "--split", "test", "--run", run,
                                "--out", tmp_path / "out.trec"], capsys)
        assert code == 2 and "cycle" in err and "RecursionError" not in err, err
        assert _one_error_line(err)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_a_file_leaves_nothing(tmp_path, tiny_beir, capsys, monkeypatch):
    beir = _beir(tmp_path, tiny_beir)
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        _disk_full()

    monkeypatch.setattr(Path, "write_text", half_then_full)
    out = tmp_path / "runs" / "bm25.trec"
    code, _, err = run_cli(["candidates", "--data", beir, "--out", out], capsys)
    assert code == 2, err
    assert f"no space left on device: {out}" in err and _one_error_line(err)
    assert not out.exists() and not _no_temporaries(tmp_path) and os.listdir(out.parent) == []


def test_disk_full_while_writing_a_folder_leaves_nothing(tmp_path, tiny_beir, capsys, monkeypatch):
    beir = _beir(tmp_path, tiny_beir)
    run = _run(beir, tmp_path, capsys)
    out = tmp_path / "eval"
    assert _evaluate(beir, run, out, capsys)[0] == 0
    before = snapshot(out)
    real = pl.DataFrame.write_parquet

    def half_then_full(self, file, *args, **kwargs):
        real(self, file, *args, **kwargs)
        Path(file).write_bytes(Path(file).read_bytes()[:10])
        _disk_full()

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_then_full)
    code, err = _evaluate(beir, run, out, capsys)
    assert code == 2 and f"no space left on device: {out}" in err, err
    assert snapshot(out) == before and not _no_temporaries(tmp_path)  # the earlier evaluation is intact


def test_quota_and_file_size_errors_name_the_path_too(tmp_path):
    from distill.core.errors import DistillError
    from distill.core.io import write_text_atomic

    for number in (errno.EDQUOT, errno.EFBIG):
        def fail(self, *args, _number=number, **kwargs):
            raise OSError(_number, os.strerror(_number))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Path, "write_text", fail)
            with pytest.raises(DistillError, match=str(tmp_path / "x.txt")) as caught:
                write_text_atomic(tmp_path / "x.txt", "text")
        assert os.strerror(number).lower() in str(caught.value)
        assert os.listdir(tmp_path) == []


def test_files_and_folders_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    import distill.core.io as io

    synced: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        synced.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    io.write_json_atomic(tmp_path / "a.json", {"a": 1})
    kinds = [k for k, _ in synced]
    assert kinds == ["file", "rename", "dir"] and synced[2][1] == str(tmp_path)
    synced.clear()
    with io.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.bin").write_bytes(b"x")
        (tmp / "g.txt").write_text("y")
    kinds = [k for k, _ in synced]
    rename = kinds.index("rename")
    assert kinds[:rename].count("file") == 2 and kinds[:rename].count("dir") == 2  # each file and folder inside
    assert kinds[rename + 1:] == ["dir"] and synced[-1][1] == str(tmp_path)


def test_fuse_teacher_adds_only_to_a_teacher_cache(tmp_path, tiny_beir, capsys, monkeypatch):
    """fuse-teacher's --out is a cache the fused scores are added to: the user's folder, a file or the input
    dataset is refused (exit 2, one line naming it) before any work; an empty folder or a teacher cache is taken."""
    import teachers.fusion
    from distill.cache.store import TeacherCache

    def work(*args, **kwargs):
        raise AssertionError(NO_TRAINING)

    monkeypatch.setattr(teachers.fusion, "read_teachers", work)  # the fusion's first step
    beir = _beir(tmp_path, tiny_beir)
    run = _run(beir, tmp_path, capsys)
    mine = _users_folder(tmp_path / "mine")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("my own notes\n")
    (tmp_path / "empty").mkdir()
    other = TeacherCache.create_or_open(tmp_path / "other", {"kind": "fake"}, None)
    other.append(pl.DataFrame({"qid": ["q"], "docid": ["d"], "score": [1.0]}, schema_overrides={"score": pl.Float32}))

    def fuse(out: Path) -> tuple[int, str]:
        code, _, err = run_cli(["fuse-teacher", "--cache", tmp_path / "teacher", "--data", beir, "--run", run,
                                "--valid-split", "test", "--out", out], capsys)
        return code, err

    for out in (mine, a_file, beir, beir / "qrels"):
        code, err = fuse(out)
        assert code == 2 and _one_error_line(err) and str(out) in err and NO_TRAINING not in err, (out, err)
    assert sorted(os.listdir(mine)) == ["notes.txt"] and a_file.read_text() == "my own notes\n"
    for out in (tmp_path / "empty", tmp_path / "other", tmp_path / "new"):
        code, err = fuse(out)
        assert NO_TRAINING in err, (out, err)  # past the check, into the fusion
