"""Neural students under ``torchrun``: two gloo processes on CPU train what one process trains.

With the same global batch (two ranks of 2 groups, one process of 4), the same seed and no dropout,
each step sees the same groups (the ranks take alternate batches of one seeded order) and DDP
averages the two ranks' gradients, means over 2 groups, into the mean over all 4: the gradients
differ only in float summation order (measured: gradient norms equal to 1e-7 relative, the same
learning rate every step). Adam divides each gradient element by its own running magnitude, so
elements whose gradient is near zero, where that rounding noise is not small, take full-size
steps of either sign; after the 16 steps here (2 rounds of 2 epochs of 4 steps) that leaves the
student's logits ~6e-4 apart (max over the validation pairs) while training moved them by ~0.055.
:data:`TOLERANCE` is 5e-3: ~9x that noise, and ~4x below what another seed gives (0.020), ~35x
below a run with twice the global batch (0.17). Dropout is off because each rank draws its own
masks, which one process cannot reproduce.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from test_students import _cache, cross_encoder_scores, planted  # noqa: F401  (planted: a fixture)
from tiny import build_bert_cross_encoder, run_cli

from distill.core.schema import SCORE

TOLERANCE = 5e-3  # absolute, on logits that training moves by ~0.055 (see the module docstring)
ROUNDS = ["--valid-split", "test", "--allow-collapse", "--epochs", "2", "--rounds", "2"]  # 16 steps of 4 groups


def _torchrun_available() -> bool:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"],
                          capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _torchrun_available(), reason="torchrun (torch.distributed.run) is not available")


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    """The tiny cross-encoder with dropout off, so that one process and two ranks draw no random masks."""
    folder = build_bert_cross_encoder(tmp_path_factory.mktemp("tiny_ce_no_dropout"))
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def student_args(planted, tiny_beir, no_dropout_model, tmp_path) -> list[str]:  # noqa: F811
    """train-student's options for a cross-encoder of the tiny model on a cache of the planted scores."""
    dataset, scores = planted
    cache = _cache(tmp_path / "cache", dataset, scores, no_dropout_model)
    return ["train-student", "--student", "cross-encoder", "--cache", str(cache), "--data", str(tiny_beir),
            "--split", "train", "--loss", "MarginMSE", "--init", str(no_dropout_model), "--negatives", "3",
            "--lr", "5e-3", "--max-length", "64", "--precision", "fp32", "--seed", "0"]


def launch(launcher: list[str], args: list[str]) -> tuple[subprocess.Popen, IO[bytes]]:
    """``torchrun LAUNCHER -m distill.cli ARGS`` started (gloo on this CPU), and the temporary file its output
    goes to (not a pipe, which a process waited for second could fill and block on)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    output = tempfile.TemporaryFile()
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "distill.cli",
                             *map(str, args)], stdout=output, stderr=subprocess.STDOUT, env=env), output


def finished(launched: tuple[subprocess.Popen, IO[bytes]]) -> subprocess.CompletedProcess:
    """A process from :func:`launch` waited for (250 s at most, then killed), checked to exit 0; its output
    (stdout and stderr together, as ``stdout``)."""
    process, output = launched
    try:
        process.wait(timeout=250)
    finally:
        process.kill()
    with output:
        output.seek(0)
        text = output.read().decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return subprocess.CompletedProcess(process.args, process.returncode, text, "")


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """``distill ARGS`` under ``torchrun --standalone --nproc_per_node 2``."""
    return finished(launch(["--standalone", "--nproc_per_node", "2"], args))


def single_process(args: list[str], out: Path, capsys) -> str:
    """``distill ARGS`` in this process with a batch of 4 groups, the global batch of the 2-rank runs; its log."""
    code, _, log = run_cli([*args, "--batch-size", "4", "--out", out], capsys)
    assert code == 0, log
    return log


def student_scores(folder: Path, tiny_beir: Path) -> np.ndarray:
    """The cross-encoder's logits on the test queries' BM25 top 10."""
    from distill.core.schema import DOCID, QID
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    test = load_beir(tiny_beir, "test")
    return cross_encoder_scores(folder, test, bm25_run(test, 10).select(QID, DOCID))[SCORE].to_numpy()


@pytest.mark.timeout(300)
def test_two_gloo_ranks_train_the_student_one_process_trains(student_args, tiny_beir, no_dropout_model, tmp_path,
                                                             capsys):
    args = [*student_args, *ROUNDS]
    single_log = single_process(args, tmp_path / "single", capsys)
    ddp = torchrun([*args, "--batch-size", "2", "--out", tmp_path / "ddp"])  # the same global batch of 4

    # one student folder, one manifest, written by rank 0
    assert sorted(p.name for p in tmp_path.glob("ddp*")) == ["ddp", "ddp.rounds"]
    manifest = json.loads((tmp_path / "ddp" / "distill.json").read_text())
    assert manifest["rounds"]["kept"] in (1, 2) and manifest["precision"]["chosen"] == "fp32"
    # rank 0 alone logs: each of distill's messages appears as often as in one process
    for message in ("BM25:", "training groups", "round 1 of 2", "round 2: validation",
                    "kept round", "saved the cross-encoder student"):
        assert (ddp.stdout + ddp.stderr).count(message) == single_log.count(message) >= 1, message

    single, distributed = student_scores(tmp_path / "single", tiny_beir), student_scores(tmp_path / "ddp", tiny_beir)
    assert np.abs(single - student_scores(no_dropout_model, tiny_beir)).max() > 5 * TOLERANCE  # training moved them
    np.testing.assert_allclose(distributed, single, atol=TOLERANCE, rtol=0)


@pytest.mark.timeout(300)
def test_a_distributed_run_stopped_after_a_checkpoint_resumes_to_the_same_student(student_args, tiny_beir, tmp_path):
    args = [*student_args, "--epochs", "1", "--batch-size", "2", "--checkpoint-steps", "2"]
    torchrun([*args, "--out", tmp_path / "whole"])
    checkpoint = tmp_path / "whole.checkpoints" / "checkpoint-2"
    # rank 0 wrote the shared states once, and each rank its own random state
    assert {p.name for p in checkpoint.glob("*_state*.safetensors")} == {"rng_state_0.safetensors",
                                                                        "rng_state_1.safetensors"}
    assert (checkpoint / "optimizer.safetensors").exists()

    # a run killed after step 2 on any rank: only checkpoint-2 was written; --resume continues from it
    shutil.copytree(checkpoint, tmp_path / "stopped.checkpoints" / "checkpoint-2")
    torchrun([*args, "--resume", "--out", tmp_path / "stopped"])
    trained = json.loads((tmp_path / "stopped" / "distill.json").read_text())["history"][-1]
    assert round(trained["train_samples_per_second"] * trained["train_runtime"]) == 8  # steps 3 and 4 of 2 x 2 groups
    # model, optimizer, schedule, data order and each rank's random state restored: the same student
    np.testing.assert_allclose(student_scores(tmp_path / "stopped", tiny_beir),
                               student_scores(tmp_path / "whole", tiny_beir), atol=1e-6, rtol=0)


def free_port() -> int:
    """A TCP port nothing listens on now, for the rendezvous (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_nodes_of_one_rank_each_train_the_student_one_process_trains(student_args, tiny_beir, tmp_path, capsys):
    """Multi-node on localhost: two torchrun agents, ``--nnodes 2 --nproc_per_node 1 --node_rank 0|1``, meeting
    at 127.0.0.1 (node 0 hosts the store), each starting one rank; the folders are shared as on a cluster."""
    args = [*student_args, *ROUNDS, "--batch-size", "2", "--out", tmp_path / "nodes"]
    port = str(free_port())
    nodes = [launch(["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node), "--master_addr", "127.0.0.1",
                     "--master_port", port], args) for node in (0, 1)]
    outputs = [finished(node).stdout for node in nodes]
    assert sorted(p.name for p in tmp_path.glob("nodes*")) == ["nodes", "nodes.rounds"]
    # rank 0 (node 0) speaks; the other node's rank only errors, of which there are none
    assert "saved the cross-encoder student" in outputs[0] and "saved the cross-encoder student" not in outputs[1]
    single_process([*student_args, *ROUNDS], tmp_path / "single", capsys)
    np.testing.assert_allclose(student_scores(tmp_path / "nodes", tiny_beir), student_scores(tmp_path / "single",
                               tiny_beir), atol=TOLERANCE, rtol=0)
