"""Long documents: a teacher's nDCG@10 and cost with truncation at 128/256/512 tokens against MaxP passages.

SciFact's abstracts often exceed 256 tokens. For a trained cross-encoder teacher, each configuration is one
``distill score-teacher`` over the same candidates (BM25's top ``--k`` of the test queries), run as a whole
process (wall and CPU seconds, as a user pays them), into its own cache; then one ``evaluate`` compares the
caches (paired t-tests against truncation at 512, Holm-adjusted). Model pairs are the (query, passage) pairs
the teacher scored: documents cut into windows of the teacher's tokenizer, as ``distill.inference.passages``
splits them.

    python scripts/bench_passages.py --teacher TEACHER --out bench_out/passages           # 300 test queries x top 20
    python scripts/bench_passages.py --teacher TEACHER --out bench_out/passages --quick   # 30 queries x top 10

A configuration whose result JSON exists is skipped, so a stopped run resumes (score-teacher resumes its cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import DEFAULT_DATA, cpu_description, measure_process, save_results

# name -> score-teacher options: truncation at three lengths, MaxP with windows of 128 and 256 tokens at half strides
CONFIGS = {
    "trunc128": ["--max-length", "128"],
    "trunc256": ["--max-length", "256"],
    "trunc512": ["--max-length", "512"],
    "maxp128": ["--max-length", "128", "--passages", "max", "--passage-tokens", "128", "--passage-stride", "64"],
    "maxp256": ["--max-length", "256", "--passages", "max", "--passage-tokens", "256", "--passage-stride", "128"],
}
BASELINE = "trunc512"


def candidates(args: argparse.Namespace) -> Path:
    """BM25's top ``k`` for the first ``queries`` test queries, written once as a TREC run."""
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run

    path = args.out / "candidates.trec"
    if not path.exists():
        dataset = load_beir(args.data, args.split)
        if args.queries:
            dataset.queries = dataset.queries.head(args.queries)
        write_run(bm25_run(dataset, args.k), path)
    return path


def score(args: argparse.Namespace, run: Path) -> dict[str, dict]:
    """Each configuration's ``score-teacher`` process, measured; skipped where its record exists."""
    import json

    records = {}
    for name, options in CONFIGS.items():
        result = args.out / "steps" / f"{name}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        if result.exists():
            records[name] = json.loads(result.read_text())
            continue
        argv = [str(Path(sys.executable).parent / "distill"), "score-teacher", "--teacher", str(args.teacher),
                "--data", str(args.data), "--split", args.split, "--run", str(run),
                "--cache", str(args.out / "caches" / name), "--dtype", args.dtype, "--backend", args.backend, *options]
        print(f"scoring {name}", flush=True)
        records[name] = measure_process(argv, result)  # its peak RSS counts this process's too: not reported
    return records


def model_pairs(args: argparse.Namespace, run: Path) -> dict[str, dict]:
    """The (query, passage) pairs each configuration scores, and the documents' token counts."""
    import numpy as np
    from transformers import AutoTokenizer

    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from distill.inference.passages import PassageConfig, passages_for

    docs = read_run(run)["docid"].to_list()
    tokenizer = AutoTokenizer.from_pretrained(str(args.teacher))
    texts = load_beir(args.data, args.split).doc_texts(docs)
    tokens = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]])
    counts = {"documents": len(docs), "doc_tokens_mean": round(float(tokens.mean()), 1),
              "doc_tokens_p90": int(np.percentile(tokens, 90)), "doc_tokens_max": int(tokens.max())}
    for name, options in CONFIGS.items():
        given = dict(zip(options[::2], options[1::2]))
        length = int(given["--max-length"])
        if "--passages" in given:
            config = PassageConfig(given["--passages"], int(given["--passage-tokens"]), int(given["--passage-stride"]))
            counts[name] = int(passages_for(tokens, config.resolve(length)).sum())
        else:
            counts[name] = len(docs)
        counts[f"{name}_truncated_share"] = round(float((tokens > length).mean()), 3)
    return counts


def compare(args: argparse.Namespace, run: Path) -> dict:
    """nDCG@10 and RR@10 of BM25 and every cache on the run's queries, with paired tests against the baseline."""
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from distill.data.views import restrict
    from distill.evaluation.runner import EvaluateConfig, evaluate

    candidates_run = read_run(run)
    dataset = restrict(load_beir(args.data, args.split), candidates_run["qid"].unique())
    rankers = {"bm25": "bm25", **{name: str(args.out / "caches" / name) for name in CONFIGS}}
    config = EvaluateConfig(k=args.k, baseline=BASELINE, metrics=("nDCG@10", "RR@10"))
    result = evaluate(dataset, candidates_run, rankers, config, show_progress=False)
    result.write(args.out / "eval", overwrite=True)
    summary = result.summary.select("ranker", "nDCG@10", "RR@10", "n_queries").to_dicts()
    tests = result.significance.filter(result.significance["metric"] == "nDCG@10").select(
        "ranker", "mean_delta", "wins", "losses", "ties", "p_ttest_adj").to_dicts()
    return {"summary": summary, "against_" + BASELINE: tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="A trained cross-encoder teacher folder.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=0, help="The first N queries of the split (0 = all).")
    parser.add_argument("--k", type=int, default=20, help="BM25 candidates per query.")
    parser.add_argument("--dtype", default="auto", help="score-teacher's --dtype [auto].")
    parser.add_argument("--backend", default="auto", help="score-teacher's --backend [auto].")
    parser.add_argument("--quick", action="store_true", help="30 queries x top 10.")
    parser.add_argument("--out", type=Path, default=Path("bench_out/passages"))
    args = parser.parse_args()
    if args.quick:
        args.queries, args.k = 30, 10
    args.out.mkdir(parents=True, exist_ok=True)
    run = candidates(args)
    records = score(args, run)
    results = {"teacher": str(args.teacher), "data": str(args.data), "split": args.split, "k": args.k,
               "queries": args.queries or "all", "cpu": cpu_description(), "configs": CONFIGS, "processes": records,
               "model_pairs": model_pairs(args, run), **compare(args, run)}
    save_results(args.out, "bench_passages" + ("_quick" if args.quick else ""), results)


if __name__ == "__main__":
    main()
