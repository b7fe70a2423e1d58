"""``train-student --engine ray``: Ray Train's workers, on a local Ray of 2 CPUs, train what one process trains.

Two workers of 2 groups against one process of 4, the same seed and no dropout, exactly as two torchrun
ranks in tests/test_distributed.py, whose tolerance (and its measurement) this takes over.
"""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.train.torch")

import numpy as np  # noqa: E402
import test_distributed as ddp  # noqa: E402
from test_distributed import no_dropout_model, student_args  # noqa: E402, F401  (fixtures)
from test_students import planted  # noqa: E402, F401  (a fixture)
from tiny import run_cli  # noqa: E402

from distill.core.errors import ConfigError  # noqa: E402
from students.ray_train import RayTrainConfig, storage_folder  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(400)
def test_two_ray_train_workers_train_the_student_one_process_trains(local_ray, student_args, tiny_beir,  # noqa: F811
                                                                   no_dropout_model, tmp_path, capsys,  # noqa: F811
                                                                   monkeypatch):
    args = [*student_args, *ddp.ROUNDS]
    ddp.single_process(args, tmp_path / "single", capsys)
    monkeypatch.chdir(tmp_path)  # --out relative to this folder, which Ray's workers do not run in
    code, _, log = run_cli([*args, "--batch-size", "2", "--out", "ray", "--engine", "ray", "--num-workers", "2"],
                           capsys)  # the same global batch of 4
    assert code == 0, log

    # rank 0 wrote the student, its manifest and rounds as torchrun's rank 0 does; Ray Train's record beside them
    assert sorted(p.name for p in tmp_path.glob("ray*")) == ["ray", "ray.ray", "ray.rounds"]
    assert storage_folder(tmp_path / "ray") == tmp_path / "ray.ray"
    manifest = json.loads((tmp_path / "ray" / "distill.json").read_text())
    single_manifest = json.loads((tmp_path / "single" / "distill.json").read_text())
    assert manifest["kind"] == single_manifest["kind"] and manifest["rounds"]["kept"] in (1, 2)
    assert manifest["precision"]["chosen"] == "fp32"

    single, distributed = (ddp.student_scores(tmp_path / name, tiny_beir) for name in ("single", "ray"))
    untrained = ddp.student_scores(no_dropout_model, tiny_beir)
    assert np.abs(single - untrained).max() > 5 * ddp.TOLERANCE  # training moved them
    np.testing.assert_allclose(distributed, single, atol=ddp.TOLERANCE, rtol=0)


@pytest.mark.timeout(120)
def test_lightgbm_on_ray_is_refused_before_ray_starts(student_args, tmp_path, capsys):  # noqa: F811
    args = [*student_args, "--out", tmp_path / "lgbm", "--engine", "ray"]
    args[args.index("cross-encoder")] = "lightgbm"
    code, _, log = run_cli(args, capsys)
    assert code == 2 and "lightgbm student trains in one process" in log and len(log.strip().splitlines()) == 1
    assert not list(tmp_path.glob("lgbm*"))


def test_ray_options_need_the_ray_engine_and_one_gpu_at_most(student_args, tmp_path, capsys):  # noqa: F811
    code, _, log = run_cli([*student_args, "--out", tmp_path / "s", "--num-workers", "2"], capsys)
    assert code == 2 and "--num-workers applies to --engine ray only" in log
    with pytest.raises(ConfigError, match="gpus_per_worker must be 0 or 1"):
        RayTrainConfig(num_workers=2, gpus_per_worker=2)


def test_a_workers_bad_input_is_raised_as_it_is_and_other_failures_name_the_rank():
    """A worker's DistillError (e.g. an input missing on its node) reaches the caller as it is: exit 2, one line."""
    from ray.train import WorkerGroupError

    from students.ray_train import _worker_error

    missing = ConfigError("no such cache", field="cache")
    assert _worker_error(WorkerGroupError("two failed", {1: missing, 0: ValueError("x")})) is not missing
    assert _worker_error(WorkerGroupError("one failed", {1: missing})) is missing
    other = _worker_error(WorkerGroupError("one failed", {0: ValueError("first line\nout of memory")}))
    assert isinstance(other, RuntimeError) and str(other) == "Ray Train worker 0 failed: out of memory"
