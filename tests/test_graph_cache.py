"""Exported teacher graphs kept between processes (:mod:`distill.inference.graph_cache`): found again by
the model's content only, never half-written, pruned to the most recently used, off on request."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

from distill.inference import graph_cache, graph_export
from distill.inference.graph import GRAPH_FILES
from distill.inference.graph import available_backends as installed_backends
from teachers import CrossEncoderTeacher, graph

pytestmark = pytest.mark.skipif("onnx" not in installed_backends(), reason="onnxruntime is not installed")


@pytest.fixture
def exports(monkeypatch, tmp_path) -> list:
    """The graph runtimes installed here, a fresh cache folder, and a list of every ONNX export made."""
    monkeypatch.setattr(graph, "available_backends", installed_backends)
    monkeypatch.setenv(graph_cache.ENV, str(tmp_path / "graphs"))
    made, export = [], graph_export.export_onnx
    monkeypatch.setattr(graph_export, "export_onnx", lambda *a: made.append(a[-1]) or export(*a))
    return made


def onnx_teacher(folder) -> CrossEncoderTeacher:
    teacher = CrossEncoderTeacher(folder, max_length=64, device="cpu")
    teacher.use_precision("onnx:fp32")
    return teacher


def test_a_second_process_loads_the_graph_the_first_exported(tiny_cross_encoder, exports):
    from test_teachers import mixed_pairs

    queries, docs = mixed_pairs(12)
    first = onnx_teacher(tiny_cross_encoder)
    scores = first.score(queries, docs)
    assert len(exports) == 1
    second = onnx_teacher(tiny_cross_encoder)  # another process, as far as the teacher knows
    assert len(exports) == 1 and second._graph_dir == first._graph_dir
    np.testing.assert_array_equal(second.score(queries, docs), scores)
    assert [p.name for p in second._graph_dir.iterdir()] == [GRAPH_FILES["onnx"]]  # no temporaries left


def test_other_weights_are_another_graph(tiny_cross_encoder, exports):
    first = onnx_teacher(tiny_cross_encoder)
    other = CrossEncoderTeacher(tiny_cross_encoder, max_length=64, device="cpu")
    with torch.no_grad():
        next(other.model.parameters()).view(-1)[0] += 1e-3  # one weight of thousands
    other.use_precision("onnx:fp32")
    assert other._graph_dir != first._graph_dir and len(exports) == 2


def test_a_killed_export_leaves_no_graph_and_the_next_one_exports_again(tiny_cross_encoder, exports, monkeypatch):
    def dies(module, tokenizer, role, path):
        path.write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(graph_export, "export_onnx", dies)
    with pytest.raises(KeyboardInterrupt):
        onnx_teacher(tiny_cross_encoder)
    [folder] = (graph_cache.cache_root()).iterdir()
    assert list(folder.iterdir()) == []  # the temporary is gone, and no model.onnx to load
    monkeypatch.undo()
    monkeypatch.setattr(graph, "available_backends", installed_backends)
    monkeypatch.setenv(graph_cache.ENV, str(folder.parent))
    teacher = onnx_teacher(tiny_cross_encoder)
    assert teacher._graph_dir == folder and (folder / GRAPH_FILES["onnx"]).stat().st_size > 1000


def test_the_cache_keeps_the_most_recently_used_and_stale_temporaries_go(tmp_path):
    a, b, c = (f"{i:x}" * 32 for i in (10, 11, 12))  # named as model_key names them
    for i, name in enumerate([a, b, c, "users_models"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    stale, fresh = tmp_path / c / ".model.onnx.x.tmp", tmp_path / c / ".model.onnx.y.tmp"
    stale.write_text("")
    fresh.write_text("")
    os.utime(stale, (0, 0))
    assert graph_cache.prune(tmp_path, keep=2, current=tmp_path / c) == [tmp_path / a]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([b, c, "users_models"])  # a folder not ours stays
    assert not stale.exists() and fresh.exists()  # a live writer's temporary stays


def test_off_exports_into_a_temporary_folder_removed_with_the_teacher(tiny_cross_encoder, exports, monkeypatch):
    monkeypatch.setenv(graph_cache.ENV, "off")
    assert graph_cache.cache_root() is None
    teacher = onnx_teacher(tiny_cross_encoder)
    folder = teacher._graph_dir
    assert folder.name.startswith("distill-graph-") and (folder / GRAPH_FILES["onnx"]).is_file()
    del teacher
    gc.collect()
    assert not folder.exists()


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(graph_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert graph_cache.cache_root() == tmp_path / "distill" / "graphs"


def test_openvino_files_are_flushed_and_its_weights_appear_before_its_graph(tmp_path, monkeypatch):
    """A power loss after an export must not leave an .xml whose .bin is short: each file is flushed to disk
    before its rename, the weights renamed first (OpenVINO need not be installed: its two calls are stood in)."""
    import sys
    import types

    events = []

    def save_model(model, path, compress_to_fp16):
        for suffix in (".bin", ".xml"):
            with open(os.path.splitext(path)[0] + suffix, "w") as f:
                f.write(model)

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(convert_model=lambda path: "graph",
                                                                       save_model=save_model))
    monkeypatch.setattr(graph_export, "fsync_path", lambda path: events.append(("fsync", os.path.basename(path))))
    replace = os.replace
    monkeypatch.setattr(graph_export.os, "replace",
                        lambda src, dst: events.append(("replace", os.path.basename(dst))) or replace(src, dst))
    (tmp_path / GRAPH_FILES["onnx"]).write_text("exported before")
    graph_export.export_pair_scorer(None, 1, None, tmp_path, "openvino")
    xml = GRAPH_FILES["openvino"]
    bin_ = xml.replace(".xml", ".bin")
    assert events == [("fsync", bin_), ("replace", bin_), ("fsync", tmp_path.name),
                      ("fsync", xml), ("replace", xml), ("fsync", tmp_path.name)]
    assert (tmp_path / xml).read_text() == (tmp_path / bin_).read_text() == "graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([GRAPH_FILES["onnx"], xml, bin_])  # no temporaries
