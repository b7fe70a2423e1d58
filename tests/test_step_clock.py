"""StepClock: a step's time is written while it runs and summed over interrupted attempts."""

from __future__ import annotations

import json
import threading

import pytest

from distill.app.step_clock import StepClock


def _entry(path, name="score-train") -> dict:
    return json.loads(path.read_text())["steps"][name]


def test_a_running_step_is_on_disk_before_it_ends(tmp_path):
    """What a kill -9 would leave: the record as of the last heartbeat, marked unfinished."""
    path, record = tmp_path / "pipeline.json", {"steps": {}}
    beaten = threading.Event()
    with StepClock(record, path, "score-train", "distill score-teacher ...", every=0.01) as clock:
        original = clock._update

        def spy(finished):
            original(finished)
            beaten.set()

        clock._update = spy
        assert beaten.wait(10), "no heartbeat written"
        entry = _entry(path)
        assert entry["finished"] is False and entry["attempts"] == 1 and entry["command"].startswith("distill")
    assert _entry(path)["finished"] is True


def test_an_interrupted_step_keeps_its_time_and_the_rerun_adds_to_it(tmp_path):
    path, record = tmp_path / "pipeline.json", {"steps": {}}
    with pytest.raises(KeyboardInterrupt), StepClock(record, path, "score-train", "c"):
        sum(range(200_000))
        raise KeyboardInterrupt
    first = _entry(path)
    assert first["finished"] is False and first["attempts"] == 1 and first["seconds"] >= 0

    record = json.loads(path.read_text())  # a new process resumes from the file
    record["steps"]["score-train"] = {**first, "seconds": 100.0, "cpu_seconds": 50.0}
    with StepClock(record, path, "score-train", "c"):
        pass
    second = _entry(path)
    assert second["finished"] is True and second["attempts"] == 2
    assert second["seconds"] >= 100.0 and second["cpu_seconds"] >= 50.0


def test_a_finished_step_done_again_starts_from_zero(tmp_path):
    """An entry of an earlier, finished run (or one written before the clock existed, with no
    ``finished`` key) is replaced, not added to."""
    path = tmp_path / "pipeline.json"
    record = {"steps": {"evaluate": {"command": "c", "seconds": 1000.0, "cpu_seconds": 900.0}}}
    with StepClock(record, path, "evaluate", "c"):
        pass
    entry = _entry(path, "evaluate")
    assert entry["attempts"] == 1 and entry["seconds"] < 1000.0


def test_a_step_without_output_adds_every_rerun(tmp_path):
    """score-teacher into the shared cache runs on every pipeline rerun (finding its pairs cached):
    its finished entry is added to, not replaced by the few seconds of the check."""
    path = tmp_path / "pipeline.json"
    record = {"steps": {"score-train": {"command": "c", "seconds": 2938.4, "cpu_seconds": 5000.0, "attempts": 2,
                                        "finished": True}}}
    with StepClock(record, path, "score-train", "c", cumulative=True):
        pass
    entry = _entry(path)
    assert entry["attempts"] == 3 and entry["seconds"] >= 2938.4 and entry["cpu_seconds"] >= 5000.0

    record["steps"]["score-train"]["cpu_seconds"] = None  # an attempt whose CPU time was not measured
    with StepClock(record, path, "score-train", "c", cumulative=True):
        pass
    assert _entry(path)["cpu_seconds"] is None and _entry(path)["attempts"] == 4
