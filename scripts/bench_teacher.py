"""Teacher scoring throughput: distill's default path (`score_teacher`, dtype and backend auto) vs CrossEncoder.predict.

Both score the same SciFact test pairs (BM25 top-k of the first --queries test queries) with
the same model at max_length 512, twice over:

- in one process, model loaded beforehand on both sides; distill's time includes choosing
  the precision (timing fp32 and bf16 on a 32-pair sample where the CPU has bf16), the
  sanity check and writing the cache;
- as whole processes, start-up included: `distill score-teacher` against a process that
  loads the same data and model and calls `CrossEncoder.predict` (batch 32, fp32, its defaults).

Wall time is the figure; CPU time (all threads, user + system) is reported beside it, as a
check when other jobs share the cores (it counts only this work, though busy-waiting threads
inflate it under contention).

The model is the packaged all-MiniLM-L6-v2 with a classification head drawn from a fixed
seed (throughput does not depend on the head's weights), saved once as a cross-encoder
folder both sides load. A second pass over the cache must make no model calls.

    python scripts/bench_teacher.py --data ../shared/data/scifact [--queries 20 --k 100] [--quick]
    python scripts/bench_teacher.py --data ../shared/data/scifact --backend openvino --dtype bf16 --no-processes
    python scripts/bench_teacher.py --data ../shared/data/scifact --teacher demo_out/models/teacher  # a trained head

With ``--teacher`` a trained cross-encoder folder replaces the untrained-head MiniLM: whether a reduced precision
(bf16, int8) ranks like fp32 can only be judged on scores that rank something. The result also gives the fraction
of the fp32 FLOP bound each side reached: the useful FLOPs of the pairs (unpadded tokens through the linear layers
and attention) over the CPU's peak (cores x fp32 FLOP per cycle x clock; AVX2 16 FMA lanes, AVX-512 32, unless
capped by ATEN_CPU_CAPABILITY=avx2; or --peak-gflops).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_DATA, cpu_description, minilm_path, save_results

# the variables that cap torch, oneDNN, MKL, FBGEMM and OpenVINO at AVX2 (docs/cpus.md), recorded with a result
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS",
        "OV_CPU_MAX_ISA")


def build_model(folder: Path, max_length: int) -> Path:
    """MiniLM-L6 with a seeded classification head, saved as a cross-encoder folder."""
    from teachers import CrossEncoderTeacher

    teacher = CrossEncoderTeacher(minilm_path(), max_length=max_length, allow_untrained_head=True, dtype="fp32")
    teacher.model.save_pretrained(folder)
    teacher.tokenizer.save_pretrained(folder)
    return folder


def useful_gflop(model: Path, queries: list[str], docs: list[str], max_length: int) -> float:
    """The FLOPs (in GFLOP) a BERT-like encoder needs for these pairs without padding: per layer and token,
    2 x (4 d^2 + 2 d ff) in the linear layers, and 4 L d per token in attention (L = the pair's tokens)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    lengths = [len(ids) for ids in tokenizer(queries, docs, truncation="longest_first", max_length=max_length)[
        "input_ids"]]
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = sum(2 * (4 * d * d + 2 * d * ff) * n + 4 * n * n * d for n in lengths)
    return layers * per_layer / 1e9


def peak_gflops(threads: int) -> float:
    """fp32 peak of ``threads`` cores: 2 FMA units x (8 lanes with AVX2, 16 with AVX-512) x 2 FLOP x clock."""
    import torch

    mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz"))
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"  # AVX2 where ATEN_CPU_CAPABILITY caps it
    return threads * 2 * (16 if avx512 else 8) * 2 * mhz / 1000


def with_share_of_peak(found: dict, seconds: str, gflop: float, peak: float) -> dict:
    """``found`` with each side's share of the fp32 peak: the useful GFLOP over its ``<side>_<seconds>``."""
    for side in ("distill", "predict"):
        found[f"{side}_share_of_peak"] = round(gflop / found[f"{side}_{seconds}"] / peak, 3)
    return found


def predict_worker(args: argparse.Namespace) -> None:
    """The baseline as a process: load data, run and model, CrossEncoder.predict, save the scores."""
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from distill.data.beir import load_beir
    from distill.data.runs import read_run

    dataset = load_beir(args.data, "test")
    run = read_run(args.run_file)
    pairs = list(zip(dataset.query_texts(run["qid"]), dataset.doc_texts(run["docid"])))
    model = CrossEncoder(str(args.model), max_length=args.max_length)
    scores = model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    np.save(args.scores_out, scores)


def in_process(args, dataset, run, model: Path, tmp: Path) -> dict:
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder

    from distill.cache.store import TeacherCache
    from teachers import CrossEncoderTeacher, score_teacher

    teacher = CrossEncoderTeacher(model, max_length=args.max_length, dtype=args.dtype, backend=args.backend)
    calls = {"n": 0}
    score = teacher._score

    def counting_score(queries, docs, progress=None):
        calls["n"] += 1
        return score(queries, docs, progress)

    teacher._score = counting_score
    t0, c0 = time.perf_counter(), time.process_time()
    result = score_teacher(teacher, dataset, run, tmp / "cache", source="bench", show_progress=False)
    distill_s, distill_cpu = time.perf_counter() - t0, time.process_time() - c0
    first_calls = calls["n"]
    t1 = time.perf_counter()
    again = score_teacher(teacher, dataset, run, tmp / "cache", source="bench", show_progress=False)
    rerun_s = time.perf_counter() - t1
    cached = TeacherCache.open(tmp / "cache").scores()

    pairs = run.select("qid", "docid")
    ce = CrossEncoder(str(model), max_length=args.max_length)
    texts = list(zip(dataset.query_texts(pairs["qid"]), dataset.doc_texts(pairs["docid"])))
    t2, c2 = time.perf_counter(), time.process_time()
    plain = ce.predict(texts, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    plain_s, plain_cpu = time.perf_counter() - t2, time.process_time() - c2

    ours = pairs.join(cached, on=["qid", "docid"], how="left")["score"].to_numpy()
    n = pairs.height
    return {
        "dtype": result.dtype, "precision": result.precision, "sanity": result.sanity,
        "distill_s": round(distill_s, 2), "predict_s": round(plain_s, 2),
        "distill_pairs_per_s": round(n / distill_s, 2), "predict_pairs_per_s": round(n / plain_s, 2),
        "speedup": round(plain_s / distill_s, 3),
        "distill_cpu_s": round(distill_cpu, 2), "predict_cpu_s": round(plain_cpu, 2),
        "cpu_time_speedup": round(plain_cpu / distill_cpu, 3),
        "spearman_vs_predict": round(float(spearmanr(ours, plain).statistic), 6),
        "max_abs_diff_vs_predict": float(np.abs(ours - plain).max()),
        "second_pass_model_calls": calls["n"] - first_calls, "second_pass_scored": again.scored,
        "second_pass_s": round(rerun_s, 3),
    }


def whole_processes(args, run_file: Path, model: Path, tmp: Path) -> dict:
    """Wall time of `distill score-teacher` and of a predict process over the same pairs."""
    distill_cmd = [str(Path(sys.executable).parent / "distill"), "score-teacher", "--teacher", str(model),
                   "--data", str(args.data), "--split", "test", "--run", str(run_file),
                   "--cache", str(tmp / "process_cache"), "--max-length", str(args.max_length), "--dtype", args.dtype,
                   "--backend", args.backend]
    predict_cmd = [sys.executable, str(Path(__file__).resolve()), "--predict-worker", "--data", str(args.data),
                   "--model", str(model), "--run-file", str(run_file), "--max-length", str(args.max_length),
                   "--scores-out", str(tmp / "predict.npy")]
    import resource

    times, cpu = {}, {}
    for name, cmd in (("distill", distill_cmd), ("predict", predict_cmd)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        fresh = {**os.environ, "DISTILL_GRAPH_CACHE": str(tmp / f"graphs_{name}")}  # pays its export, as a first run
        done = subprocess.run(cmd, capture_output=True, text=True, env=fresh)
        times[name] = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[name] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if done.returncode:
            raise SystemExit(f"{name} process failed ({done.returncode}):\n{done.stderr[-3000:]}")
        if name == "distill":
            log = done.stderr.strip().splitlines() + done.stdout.strip().splitlines()
            times["distill_log"] = [line for line in log if "compute" in line or "scored" in line]
    from distill.cache.store import TeacherCache

    precision = TeacherCache.open(tmp / "process_cache").manifest.get("precision")  # what auto measured and kept
    return {"distill_process_s": round(times["distill"], 2), "predict_process_s": round(times["predict"], 2),
            "distill_precision": precision,
            "process_speedup": round(times["predict"] / times["distill"], 3),
            "distill_process_cpu_s": round(cpu["distill"], 2), "predict_process_cpu_s": round(cpu["predict"], 2),
            "process_cpu_time_speedup": round(cpu["predict"] / cpu["distill"], 3), "distill_log": times["distill_log"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=20, help="Test queries to score (0 = all).")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dtype", default="auto", help="distill's --dtype: auto | fp32 | bf16 | fp16 | int8.")
    parser.add_argument("--teacher", type=Path, help="A trained cross-encoder folder [MiniLM, untrained head].")
    parser.add_argument("--peak-gflops", type=float, help="The CPU's fp32 peak [from the clock and flags].")
    parser.add_argument("--backend", default="auto", help="distill's --backend: auto | torch | onnx | openvino.")
    parser.add_argument("--no-processes", action="store_true", help="Skip the whole-process comparison.")
    parser.add_argument("--no-in-process", action="store_true", help="Skip the one-process comparison.")
    parser.add_argument("--quick", action="store_true", help="8 queries x top-20 (a few minutes).")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--predict-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scores-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.predict_worker:
        return predict_worker(args)
    if args.quick:
        args.queries, args.k = 8, 20

    import torch

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run

    dataset = load_beir(args.data, "test")
    if args.queries:
        dataset.queries = dataset.queries.head(args.queries)
    run = bm25_run(dataset, args.k)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        # a first run's cost: every export made here goes to an empty graph cache of this run's, never reused
        os.environ["DISTILL_GRAPH_CACHE"] = str(tmp / "graphs")
        model = args.teacher or build_model(tmp / "model", args.max_length)
        run_file = tmp / "run.trec"
        write_run(run, run_file)
        gflop = useful_gflop(model, dataset.query_texts(run["qid"]), dataset.doc_texts(run["docid"]), args.max_length)
        peak = args.peak_gflops or peak_gflops(torch.get_num_threads())
        results = {"pairs": run.height, "queries": dataset.queries.height, "k": args.k,
                   "max_length": args.max_length, "dtype_asked": args.dtype, "backend_asked": args.backend,
                   "teacher": str(args.teacher or "MiniLM-L6, untrained head (seed 0)"),
                   "cpu": cpu_description(), "capped": {k: v for k, v in os.environ.items() if k in CAPS},
                   "torch_threads": torch.get_num_threads(), "useful_gflop": round(gflop, 1),
                   "peak_gflops": round(peak, 1)}
        backend = f"_{args.backend}" if args.backend != "auto" else ""
        name = "bench_teacher" + ("_quick" if args.quick else "") + backend
        if not args.no_in_process:
            results["in_process"] = with_share_of_peak(in_process(args, dataset, run, model, tmp), "s", gflop, peak)
            save_results(args.out, name, results)  # kept should the process comparison be stopped
        if not args.no_processes:
            results["processes"] = with_share_of_peak(whole_processes(args, run_file, model, tmp), "process_s",
                                                      gflop, peak)
            save_results(args.out, name, results)
    if results.get("in_process", {}).get("second_pass_model_calls"):
        raise SystemExit("second pass over the cache called the model")


if __name__ == "__main__":
    main()
