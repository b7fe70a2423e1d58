"""Wall and CPU time of a long pipeline step, kept across interruptions.

A step of a multi-hour run (scoring 174,000 pairs, rounds of training) may be stopped by a
session's end, Ctrl-C or kill -9 and resumed later from its cache or checkpoint. Timing only the
attempt that finishes would state a fraction of its cost, so the clock writes the step's running
totals into the run's record every few seconds and a rerun adds its own time to them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from distill.core.io import write_json_atomic

HEARTBEAT_S = 30.0  # a step killed with -9 loses at most this much of its recorded time


class StepClock:
    """Context manager timing ``record["steps"][name]``; ``record`` is written to ``path`` while the
    step runs (every ``every`` seconds) and when it ends, finished or not.

    The entry holds ``seconds`` and ``cpu_seconds`` summed over every attempt (CPU time of this
    process, all its threads), ``attempts``, and ``finished``. An earlier unfinished entry is
    continued; a finished one is replaced (its output was deleted: the step is being redone),
    unless ``cumulative``: a step with no output of its own (scoring into a shared cache) runs on
    every rerun, finds its work done or resumes it, and every attempt adds to its cost.
    """

    def __init__(self, record: dict, path: Path, name: str, command: str, every: float = HEARTBEAT_S,
                 cumulative: bool = False) -> None:
        self.record, self.path, self.name, self.every = record, path, name, every
        earlier = record.setdefault("steps", {}).get(name, {})
        # entries written before this clock existed were written only on completion: finished
        self.base = earlier if cumulative or not earlier.get("finished", True) else {}
        self.command = command
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"clock-{name}", daemon=True)

    def __enter__(self) -> StepClock:
        self._start, self._cpu = time.perf_counter(), time.process_time()
        self._update(finished=False)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        self._update(finished=exc_type is None)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._update(finished=False)

    def _update(self, finished: bool) -> None:
        with self._lock:
            self.record["steps"][self.name] = {
                "command": self.command,
                "seconds": round(self.base.get("seconds", 0.0) + time.perf_counter() - self._start, 1),
                "cpu_seconds": _add(self.base.get("cpu_seconds", 0.0), time.process_time() - self._cpu),
                "attempts": self.base.get("attempts", 0) + 1,
                "finished": finished,
            }
            write_json_atomic(self.path, self.record)


def _add(earlier: float | None, seconds: float) -> float | None:
    """A running total; None (an earlier attempt whose CPU time nobody measured) stays unknown."""
    return None if earlier is None else round(earlier + seconds, 1)
