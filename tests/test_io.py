"""distill.core.io: hand-written JSON read leniently but located (the cache's and an export's manifests included),
and an output a crash left half-swapped put back."""

from __future__ import annotations

import json
import re

import pytest

from distill.cache.files import MANIFEST, parse_manifest
from distill.core.errors import InputError
from distill.core.io import atomic_dir, read_json, restore_swapped
from distill.rankers.loading import model_kind
from students.backends import read_export_manifest


def test_a_byte_order_mark_on_hand_written_json_is_accepted(tmp_path):
    spec = tmp_path / "cascade.json"
    spec.write_text("\ufeff" + json.dumps({"stages": []}), encoding="utf-8")
    assert read_json(spec) == {"stages": []}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "distill.json").write_text("\ufeff" + json.dumps({"kind": "lightgbm-student"}))
    assert model_kind(tmp_path / "m") == "lightgbm-student"


def test_a_json_syntax_error_names_file_and_line(tmp_path):
    spec = tmp_path / "cascade.json"
    spec.write_text('{\n  "stages": [\n    {"ranker": "a",}\n  ]\n}\n')
    with pytest.raises(InputError, match=r"cascade\.json:3: unreadable JSON"):
        read_json(spec)


def test_a_corrupt_cache_manifest_names_file_and_line_and_how_to_rebuild_it(tmp_path):
    """A bare ``json.loads`` would raise JSONDecodeError, with neither the file nor the repair command."""
    manifest = tmp_path / "cache" / MANIFEST
    manifest.parent.mkdir()
    manifest.write_text('{\n  "kind": "teacher-cache",\n  "teacher": {"model": "t",}\n}\n')
    with pytest.raises(InputError, match=rf"{re.escape(MANIFEST)}:3: unreadable JSON") as caught:
        parse_manifest(manifest)
    assert caught.value.line == 3
    assert f"distill cache verify --repair {manifest.parent}" in str(caught.value)


def test_a_corrupt_export_manifest_names_file_and_line(tmp_path):
    """A bare ``json.loads`` would raise JSONDecodeError, which names no file."""
    (tmp_path / "distill.json").write_text('{"kind": "exported-student", "format":')
    with pytest.raises(InputError, match=r"distill\.json:1: unreadable JSON"):
        read_export_manifest(tmp_path)


def test_an_output_left_as_old_by_a_crash_between_renames_is_put_back(tmp_path):
    """A kill between moving the earlier output aside and renaming the new one in leaves only ``.out.old``:
    the next write (even one that then fails) restores it instead of losing it."""
    out = tmp_path / "out"
    old = tmp_path / ".out.old"
    old.mkdir()
    (old / "distill.json").write_text(json.dumps({"kind": "evaluation"}))
    with pytest.raises(RuntimeError), atomic_dir(out, kind="evaluation"):
        raise RuntimeError("the new run fails")
    assert (out / "distill.json").is_file() and not old.exists()
    assert restore_swapped(out) is False  # nothing left to restore
