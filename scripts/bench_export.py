"""Exported cross-encoder students against their torch form: speed and nDCG@10, in one run.

Exports a cross-encoder student (``distill export``: ONNX Runtime and OpenVINO, fp32 and
int8, each through its fidelity check on the student's own training queries), then runs
:func:`distill.evaluation.runner.evaluate` with ``latency`` on the test queries' BM25 candidates,
the same code as ``distill evaluate --latency`` at its defaults (top 100, 1 thread; the command
is printed), so every ratio compares rankers timed in one process on the same threads:

- ``speedup``: the torch student's p50 latency per query (k candidates) / the export's, the torch student
  loaded as ``distill evaluate`` loads it by default (``dtype="auto"``: bf16 where the CPU computes it
  natively, else fp32); ``torch_fp32`` is the same student pinned to fp32, for comparison;
- ``ndcg_ratio``: the export's nDCG@10 / the torch student's.

Unless ``--no-auto``, it also runs ``distill export --quantize auto`` (all four variants, each timed by
the export itself against torch in one process) and reports each variant's own measurement and which
one auto kept (``auto``). ``ATEN_CPU_CAPABILITY``/``ONEDNN_MAX_CPU_ISA``/``OV_CPU_MAX_ISA`` and the like,
set when the script starts, cap torch's and OpenVINO's kernels (recorded as ``isa_cap``); ONNX Runtime
has no such cap.

    python scripts/bench_export.py --model bench_out/demo/models/ce_student --data bench_out/demo/data [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import cpu_description, quiet_logging, save_results

VARIANTS = {  # name -> ExportConfig options
    "onnx": {"format": "onnx"},
    "onnx_int8": {"format": "onnx", "quantize": "int8"},
    "openvino": {"format": "openvino"},
    "openvino_int8": {"format": "openvino", "quantize": "int8"},
    "openvino_int8_bf16": {"format": "openvino", "quantize": "int8", "openvino_precision": "bf16"},
}
QUICK = ("onnx", "onnx_int8", "openvino", "openvino_int8")  # the variants --quantize auto chooses among
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS",
            "OV_CPU_MAX_ISA")


def cpu_flags() -> list[str]:
    """The CPU's vector-extension flags that int8 and bf16 kernels use."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in wanted if f in flags.split()]


def _arguments() -> argparse.Namespace:
    from distill.evaluation.runner import EvaluateConfig

    defaults = EvaluateConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="A cross-encoder student folder.")
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder of the evaluation.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=defaults.k, help="BM25 candidates per query.")
    parser.add_argument("--latency-queries", type=int, default=defaults.latency_queries)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="Threads of every ranker while timed.")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="Repeatable [all].")
    parser.add_argument("--out", type=Path, default=Path("bench_out/export"))
    parser.add_argument("--no-auto", dest="auto", action="store_false", help="Skip the --quantize auto export.")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)} only, 10 latency queries.")
    return parser.parse_args()


def _export(args: argparse.Namespace, variants: list[str]) -> dict[str, dict]:
    """Each variant's export (its check and its own speed against torch), and with ``args.auto`` auto's."""
    from students.export import ExportConfig, ExportRefused, export_model

    exports: dict[str, dict] = {}
    for name, options in [*((n, VARIANTS[n]) for n in variants), *([("auto", {"quantize": "auto"})] * args.auto)]:
        start = time.perf_counter()
        try:
            fidelity = export_model(args.model, args.out / name, ExportConfig(latency_threads=args.threads, **options))
        except ExportRefused as err:
            exports[name] = {"refused": str(err)}
            continue
        exports[name] = {"export_s": round(time.perf_counter() - start, 1), "fidelity": fidelity}
    return exports


def main() -> None:
    args = _arguments()
    quiet_logging()
    variants = args.variant or list(QUICK if args.quick else VARIANTS)
    latency_queries = 10 if args.quick else args.latency_queries

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run
    from distill.evaluation.runner import EvaluateConfig, evaluate
    from distill.rankers.loading import load_ranker

    exports = _export(args, variants)
    dataset = load_beir(args.data, args.split)
    run = bm25_run(dataset, args.k)
    write_run(run, args.out / "bm25.trec", tag="bm25")
    # "torch" as a bare --ranker loads it (dtype auto, which may keep bf16); "torch_fp32" pinned to fp32
    rankers = {"bm25": "bm25", "torch": str(args.model),
               "torch_fp32": load_ranker(str(args.model), name="torch_fp32", dtype="fp32"),
               **{name: str(args.out / name) for name in variants if "fidelity" in exports[name]}}
    command = ["distill", "evaluate", "--data", str(args.data), "--split", args.split, "--run",
               str(args.out / "bm25.trec"), "--k", str(args.k), "--latency", "--latency-queries",
               str(latency_queries), "--threads", str(args.threads), "--baseline", "torch",
               *[f"--ranker={n}={s}" for n, s in rankers.items() if n != "torch_fp32"], "--out", str(args.out / "eval")]
    print("same as (plus the torch student pinned to fp32, torch_fp32):", " ".join(command))
    config = EvaluateConfig(baseline="torch", k=args.k, latency=True, latency_queries=latency_queries,
                            threads=args.threads)
    result = evaluate(dataset, run, rankers, config)
    result.write(args.out / "eval")
    ndcg = dict(zip(result.summary["ranker"], result.summary["nDCG@10"]))
    p50 = {name: result.latency[name].p50_ms for name in rankers if name in result.latency}
    auto = exports.get("auto", {}).get("fidelity", {}).get("selection", {})
    own = {row["variant"]: row for row in auto.get("candidates", [])}
    table = {name: {"nDCG@10": ndcg[name], "p50_ms": p50.get(name),
                    "speedup": p50["torch"] / p50[name] if name in p50 else None,
                    "ndcg_ratio": ndcg[name] / ndcg["torch"] if ndcg["torch"] else None,
                    "export_ms": own.get(name, {}).get("ms_per_query"),
                    "export_speedup": own.get(name, {}).get("speedup")}
             for name in rankers}
    save_results(args.out, "bench_export", {
        "model": str(args.model), "data": str(args.data), "split": args.split, "k": args.k,
        "latency_queries": latency_queries, "threads": args.threads, "cpu_flags": cpu_flags(),
        "cpu": cpu_description(), "isa_cap": {name: os.environ[name] for name in ISA_CAPS if name in os.environ},
        "equivalent_command": " ".join(command), "exports": exports, "table": table,
        "auto": {key: auto.get(key) for key in ("kept", "why", "torch_ms_per_query", "torch_compute")},
    })


if __name__ == "__main__":
    main()
