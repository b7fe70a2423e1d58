from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def fp32_auto_precision(monkeypatch):
    """``dtype="auto"`` (scoring and training) resolves to torch fp32 on every machine (AVX2, AVX-512-BF16, AMX, CUDA;
    with or without the graph runtimes of the onnx extra), so no test depends on the machine it runs on; precision
    tests fake the hardware they need instead."""
    from distill import train_precision
    from teachers import graph, precision

    monkeypatch.setattr(precision, "native_precisions", lambda device_type: ())
    monkeypatch.setattr(precision, "int8_available", lambda device_type: False)  # nor dynamic int8
    monkeypatch.setattr(graph, "available_backends", lambda: ())
    monkeypatch.setattr(train_precision, "native_precisions", lambda device_type: ())  # training's "auto" too


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory) -> Path:
    """Exported graphs go to a folder of this test session's (subprocesses inherit it), not the user's cache."""
    folder = tmp_path_factory.mktemp("graph_cache")
    os.environ["DISTILL_GRAPH_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    return tiny.build_bert_cross_encoder(tmp_path_factory.mktemp("tiny_ce"))


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory) -> Path:
    return tiny.build_bert_bi_encoder(tmp_path_factory.mktemp("tiny_bi"))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    return tiny.build_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return tiny.build_beir(tmp_path_factory.mktemp("tiny_beir"))


@pytest.fixture(autouse=True)
def unfrozen_gc():
    """A served app's warm-up freezes every live object out of the garbage collector (``gc.freeze``): in one test
    process that would keep what later tests drop, so each test ends with the collector as it found it."""
    import gc

    yield
    gc.unfreeze()
