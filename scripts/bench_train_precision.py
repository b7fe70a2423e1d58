"""Training precision on this CPU: what `precision="auto"` measures and chooses, and what bf16 costs.

On a finished `distill demo` folder (its teacher, cross-encoder student and bi-encoder):

1. the step timings `auto` makes for each model (`distill.training.precision.choose_train_precision`:
   one forward and backward pass over 4 training groups in fp32 and under bf16 autocast, CPU
   seconds, after a warm-up), and what it keeps;
2. with `--train`, the demo's cross-encoder student trained again for `--rounds` rounds from
   the demo's teacher cache with the demo's own flags, once in fp32 and once in bf16: the wall
   time of each and its validation nDCG@10 after every round (the quality bf16 costs, if any).

    python scripts/bench_train_precision.py --demo-out demo_out [--train --rounds 2] [--quick]

`--quick` times one model and trains nothing. Where the CPU has no native bf16, `auto` does not
time anything and keeps fp32; the script says so.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from _common import quiet_logging, run_distill, save_results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", type=Path, required=True, help="A finished `distill demo --out` folder.")
    parser.add_argument("--out", type=Path, default=Path("bench_out/train_precision"))
    parser.add_argument("--train", action="store_true", help="Also train the cross-encoder student in both.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args()


def sample_groups(demo: Path, n: int = 4) -> list:
    """The first ``n`` training queries of the demo's split, each with 8 of its BM25 candidates."""
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from distill.training.groups import Group

    dataset = load_beir(demo / "data", "train")
    run = read_run(demo / "runs" / "train.trec")
    groups = []
    for qid in dataset.queries["qid"].to_list()[:n]:
        docids = run.filter(run["qid"] == qid)["docid"].to_list()[:8]
        groups.append(Group(qid=qid, query=dataset.query_texts([qid])[0], docids=docids,
                            docs=dataset.doc_texts(docids), teacher=[0.0] * len(docids), labels=[0.0] * len(docids)))
    return groups


def step_timings(demo: Path, quick: bool) -> dict[str, dict]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder

    from distill.training.precision import choose_train_precision

    models = {"ce_student": lambda: CrossEncoder(str(demo / "models" / "ce_student")),
              "teacher": lambda: CrossEncoder(str(demo / "models" / "teacher")),
              "bi_encoder": lambda: SentenceTransformer(str(demo / "models" / "bi_encoder"))}
    groups = sample_groups(demo)
    return {name: choose_train_precision("auto", load(), groups).to_dict()
            for name, load in list(models.items())[:1 if quick else None]}


def train_both(demo: Path, out: Path, rounds: int) -> dict[str, dict]:
    """The demo's cross-encoder student command, ``rounds`` rounds, in fp32 and in bf16."""
    command = json.loads((demo / "pipeline.json").read_text())["steps"]["student-cross-encoder"]["command"]
    argv = shlex.split(command.split("  #")[0])[1:]
    argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]
    argv = [a for a in argv if a != "--resume"]
    rounds_at = argv.index("--rounds")
    argv[rounds_at + 1] = str(rounds)
    results = {}
    for precision in ("fp32", "bf16"):
        folder, record = out / f"ce_{precision}", out / f"ce_{precision}.json"
        if not record.exists():  # resumable: a finished precision is read back
            start, cpu = time.perf_counter(), time.process_time()
            run_distill([*argv, "--precision", precision, "--out", folder])
            history = json.loads((folder / "distill.json").read_text())["rounds"]["history"]
            record.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1),
                                          "cpu_seconds": round(time.process_time() - cpu, 1),
                                          "valid_by_round": [round(r["value"], 4) for r in history]}))
        results[precision] = json.loads(record.read_text())
    return results


def main() -> None:
    args = parse_args()
    quiet_logging()
    from distill.core.hardware import cpu_supports_bf16

    results = {"cpu_native_bf16": cpu_supports_bf16(), "steps": step_timings(args.demo_out, args.quick)}
    if args.train and not args.quick:
        results["train"] = train_both(args.demo_out, args.out, args.rounds)
    save_results(args.out, "bench_train_precision", results)


if __name__ == "__main__":
    main()
