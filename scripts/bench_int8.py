"""Dynamic int8 for a cross-encoder teacher: speed against fp32 and ranking fidelity, per choice of layers.

torch's dynamic int8 (``distill.inference.quantize``, FBGEMM) is one of ``--dtype auto``'s candidates on a CPU,
kept only where the fidelity gate passes. This shows why it passes or not on a given teacher: the teacher scores
the BM25 candidates of a split in fp32 and in int8 with several sets of linear layers quantized (all, per-tensor
or per-channel weights; all but the feed-forward output layers; only the feed-forward input layers), and for each
the speed-up over fp32 (wall time, one process, length-sorted batches as score-teacher runs them), Spearman's rho
over all pairs, and the gate's verdict on 32 pairs (``teachers.precision.judge_precision``).

    python scripts/bench_int8.py --teacher demo_out/models/teacher --data demo_out/data --split valid --max-length 128
    python scripts/bench_int8.py --data ../shared/data/scifact --split test --max-length 512 --pairs 200  # MiniLM
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from _common import DEFAULT_DATA, cpu_description, minilm_path, save_results


def variants(names: list[str]) -> dict[str, dict]:
    """Which linear layers each variant quantizes, and how (torch's qconfig per layer name)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    def only(keep) -> dict:
        return {n: per_channel_dynamic_qconfig for n in names if keep(n)}

    return {
        "all, per-tensor (distill's)": {torch.nn.Linear: default_dynamic_qconfig},
        "all, per-channel": {torch.nn.Linear: per_channel_dynamic_qconfig},
        "all but feed-forward output": only(lambda n: not (n.endswith("output.dense") and "attention" not in n)),
        "feed-forward input only": only(lambda n: "intermediate" in n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="A trained cross-encoder folder [MiniLM, untrained head].")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=50, help="BM25 candidates per query.")
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from torch.ao.quantization import quantize_dynamic

    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.inference.quantize import int8_engine
    from teachers import CrossEncoderTeacher
    from teachers.precision import judge_precision, sample_pairs

    dataset = load_beir(args.data, args.split)
    run = bm25_run(dataset, args.k).head(args.pairs)
    queries, docs = dataset.query_texts(run["qid"]), dataset.doc_texts(run["docid"])
    teacher = CrossEncoderTeacher(args.teacher or minilm_path(), max_length=args.max_length, dtype="fp32",
                                  allow_untrained_head=args.teacher is None)
    fp32 = teacher.model

    def timed() -> tuple[np.ndarray, float]:
        teacher.score(queries[:32], docs[:32])  # warm-up
        start = time.perf_counter()
        scores = teacher.score(queries, docs)
        return scores, time.perf_counter() - start

    reference, fp32_s = timed()
    sample = sample_pairs(len(queries))
    names = [n for n, m in fp32.named_modules() if isinstance(m, torch.nn.Linear)]
    torch.backends.quantized.engine = int8_engine()
    rows = {"fp32": {"pairs_per_s": round(len(queries) / fp32_s, 2)}}
    for label, spec in variants(names).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher.model = quantize_dynamic(fp32, spec, dtype=torch.qint8)
        scores, seconds = timed()
        gate = judge_precision(reference[sample], scores[sample], "int8")
        rows[label] = {"speedup": round(fp32_s / seconds, 3), "spearman": round(float(spearmanr(reference, scores)
                                                                                        .statistic), 4),
                       "gate_passed": gate.passed, "gate_discordant": gate.discordant}
    results = {"teacher": args.teacher or "MiniLM-L6, untrained head (seed 0)", "pairs": len(queries),
               "max_length": args.max_length, "cpu": cpu_description(), "torch_threads": torch.get_num_threads(),
               "engine": int8_engine(), "variants": rows}
    save_results(args.out, "bench_int8", results)


if __name__ == "__main__":
    main()
