"""The ``ray`` engine of score-teacher, on a local Ray with 2 CPUs and a tiny teacher.

One Ray session serves the whole module. Compaction (folding shards into one, which drops
duplicates) is switched off where the raw shards themselves are checked for duplicates.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
import tiny

ray = pytest.importorskip("ray")

from tiny import run_cli, snapshot  # noqa: E402

from distill.cache.scoring import score_into_cache  # noqa: E402
from distill.cache.store import TeacherCache  # noqa: E402
from distill.core.errors import CacheMismatchError, ConfigError  # noqa: E402
from distill.core.manifest import frame_hash  # noqa: E402
from distill.data.beir import load_beir  # noqa: E402
from distill.data.bm25 import bm25_run  # noqa: E402
from distill.data.runs import write_run  # noqa: E402
from teachers import load_teacher, score_teacher  # noqa: E402
from teachers.ray_engine import score_on_ray  # noqa: E402

FLUSH = 16  # pairs per batch: the tiny run's 160 pairs make 10 shards


def _faulty_workers(control: Path):
    """A Ray worker setup hook: teachers in workers obey the ``control`` file, if there is one.

    "sigkill" or "ray.kill": the first batch one worker starts (whoever creates ``<control>.done``
    first) dies half-way: by SIGKILL, which Ray answers by restarting the worker and retrying
    the batch, or by ``ray.kill``, which ends the actor for good and fails Ray's pass.
    "forbid": any call fails (a run that needs no scoring must not call the model).
    The hook imports what it uses itself: workers cannot import this test module.
    """

    def hook() -> None:
        import os
        import signal

        import ray

        from teachers.cross_encoder import CrossEncoderTeacher

        score = CrossEncoderTeacher.score

        def first(marker: Path) -> bool:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return False
            return True

        def faulty_score(self, queries, docs, progress=None):
            mode = control.read_text() if control.exists() else ""
            if mode == "forbid":
                raise AssertionError("the model was called")
            if mode in ("sigkill", "ray.kill") and first(control.with_suffix(".done")):
                score(self, queries[:2], docs[:2])  # part of the batch done, nothing returned
                if mode == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                ray.kill(ray.get_runtime_context().current_actor)
            return score(self, queries, docs, progress)

        CrossEncoderTeacher.score = faulty_score

    return hook


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray_control") / "mode"


@pytest.fixture(scope="module")
def local_ray(control):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": _faulty_workers(control)})
    yield
    ray.shutdown()


@pytest.fixture
def mode(control):
    """Set the workers' fault mode for one test."""

    def set_mode(text: str) -> None:
        control.write_text(text)

    yield set_mode
    control.unlink(missing_ok=True)
    control.with_suffix(".done").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def data(tiny_beir):
    dataset = load_beir(tiny_beir, "train")
    return dataset, bm25_run(dataset, 10)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_cross_encoder, data):
    """The single-process engine's cache of the tiny teacher at fp32."""
    dataset, run = data
    teacher = load_teacher(tiny_cross_encoder, dtype="fp32")
    folder = tmp_path_factory.mktemp("single") / "cache"
    score_into_cache(teacher, dataset, run, _cache(folder, dataset, teacher), flush_pairs=FLUSH, show_progress=False)
    return TeacherCache.open(folder).scores()


@pytest.fixture
def no_compaction(monkeypatch):
    monkeypatch.setattr(TeacherCache, "compact", lambda self: None)


def _cache(folder, dataset, teacher):
    return TeacherCache.create_or_open(folder, teacher.fingerprint(), frame_hash(dataset.corpus))


def _raw_rows(folder: Path) -> pl.DataFrame:
    """Every row of every shard file, without de-duplicating."""
    return pl.concat([pl.read_parquet(p) for p in sorted((folder / "shards").glob("part-*.parquet"))])


def _assert_same_cache(folder: Path, reference: pl.DataFrame) -> None:
    raw = _raw_rows(folder)
    assert raw.height == reference.height  # every pair once: no duplicate rows in the shard files
    assert not raw.select("qid", "docid").is_duplicated().any()
    joined = reference.join(raw, on=["qid", "docid"], how="left", suffix="_ray")
    assert joined["score_ray"].null_count() == 0
    assert (joined["score"] - joined["score_ray"]).abs().max() < 1e-3


def _assert_cpus_released(timeout_s: float = 20.0) -> None:
    """Every CPU of the local Ray is free again (a pass's pool ended with it, not with garbage collection)."""
    import time

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()


def test_ray_cache_equals_the_single_process_cache(tmp_path, local_ray, no_compaction, tiny_cross_encoder, tiny_beir,
                                                   data, reference, capsys):
    _, run = data
    write_run(run, tmp_path / "run.trec")
    code, _, err = run_cli(["score-teacher", "--teacher", tiny_cross_encoder, "--cache", tmp_path / "cache",
                            "--data", tiny_beir, "--split", "train", "--run", tmp_path / "run.trec", "--dtype", "fp32",
                            "--flush-pairs", FLUSH, "--engine", "ray", "--num-workers", 2], capsys)
    assert code == 0, err
    _assert_same_cache(tmp_path / "cache", reference)
    _assert_cpus_released()


def test_ray_options_need_the_ray_engine(tmp_path, tiny_cross_encoder, tiny_beir, capsys):
    code, _, err = run_cli(["score-teacher", "--teacher", tiny_cross_encoder, "--cache", tmp_path / "cache",
                            "--data", tiny_beir, "--run", tmp_path / "run.trec", "--num-workers", 2], capsys)
    assert code == 2 and "--num-workers applies to --engine ray" in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("how", ["sigkill", "ray.kill"])
def test_a_worker_killed_mid_batch_still_leaves_a_complete_cache(tmp_path, local_ray, mode, control, no_compaction,
                                                                 tiny_cross_encoder, data, reference, how):
    dataset, run = data
    mode(how)
    teacher = load_teacher(tiny_cross_encoder, dtype="fp32")
    # the second pass (after ray.kill) needs the first pass's CPUs back: a pool left alive fails it after 120 s (60 s
    # were once too few for a healthy pool to restart while other jobs held both cores)
    stats = score_on_ray(teacher, dataset, run, _cache(tmp_path / "cache", dataset, teacher), flush_pairs=FLUSH,
                         show_progress=False, num_workers=2, start_timeout_s=120)
    assert control.with_suffix(".done").exists()  # a worker did die mid-batch
    assert stats.scored == run.height
    _assert_same_cache(tmp_path / "cache", reference)
    assert len(list((tmp_path / "cache" / "shards").glob("part-*.parquet"))) == -(-run.height // FLUSH)
    _assert_cpus_released()


def test_rerun_over_a_full_cache_makes_no_model_call(tmp_path, local_ray, mode, monkeypatch, tiny_cross_encoder,
                                                     data):
    dataset, run = data
    teacher = load_teacher(tiny_cross_encoder, dtype="fp32")
    folder = tmp_path / "cache"
    score_into_cache(teacher, dataset, run, _cache(folder, dataset, teacher), show_progress=False)
    before = {p.name: p.read_bytes() for p in (folder / "shards").iterdir()}
    mode("forbid")  # in the workers
    monkeypatch.setattr(teacher, "_score", lambda *args, **kwargs: pytest.fail("the driver's model was called"))
    result = score_teacher(teacher, dataset, run, folder, engine="ray", engine_options={"num_workers": 2},
                           show_progress=False)
    assert result.scored == 0 and result.scoring.already_cached == run.height
    assert {p.name: p.read_bytes() for p in (folder / "shards").iterdir()} == before


def test_a_cache_of_another_teacher_is_refused(tmp_path, local_ray, tiny_cross_encoder, data):
    dataset, run = data
    teacher = load_teacher(tiny_cross_encoder, dtype="fp32")
    folder = tmp_path / "cache"
    score_into_cache(teacher, dataset, run.head(5), _cache(folder, dataset, teacher), show_progress=False)
    before = snapshot(folder)
    other = load_teacher(tiny.build_bert_cross_encoder(tmp_path / "other", seed=1), dtype="fp32")
    with pytest.raises(CacheMismatchError, match="another teacher"):
        score_teacher(other, dataset, run, folder, engine="ray", show_progress=False)
    with pytest.raises(CacheMismatchError):  # the engine checks too, before any worker starts
        score_on_ray(other, dataset, run, TeacherCache.open(folder), show_progress=False)
    assert snapshot(folder) == before


def test_a_worker_whose_model_differs_from_the_caches_refuses_to_score(tmp_path, local_ray, data):
    dataset, run = data
    model = tiny.build_bert_cross_encoder(tmp_path / "model", seed=0)
    teacher = load_teacher(model, dtype="fp32")
    cache = _cache(tmp_path / "cache", dataset, teacher)  # fingerprinted with the first weights
    tiny.build_bert_cross_encoder(model, seed=1)  # what a worker node finds at that path: other weights
    with pytest.raises(ConfigError, match="a Ray worker could not build the teacher: .*weights_sha256"):
        score_on_ray(teacher, dataset, run, cache, show_progress=False)
    assert not (tmp_path / "cache").exists()


def test_workers_the_cluster_cannot_fit_fail_after_the_start_timeout(tmp_path, local_ray, tiny_cross_encoder, data):
    dataset, run = data
    teacher = load_teacher(tiny_cross_encoder, dtype="fp32")
    with pytest.raises(RuntimeError, match="did not start within 2s"):
        score_on_ray(teacher, dataset, run, _cache(tmp_path / "cache", dataset, teacher), show_progress=False,
                     num_workers=2, cpus_per_worker=2, start_timeout_s=2)
    assert not list((tmp_path / "cache").glob("shards/part-*"))
