"""Imported teacher scores against the cache they came from, and an ensemble of two teachers.

On a finished pipeline (``distill demo`` or ``scripts/bench_students.py``: its trained teacher's cache,
its candidates ``runs/{train,valid,test}.trec`` and its split view ``data/``), nothing retrained:

1. ``distill cache export`` the teacher's cache as a TREC run, ``distill cache import`` it back (the
   pipeline's unjudged queries too, with ``--queries``), and compare the two caches' scores;
2. train the LightGBM and bi-encoder students from the original cache and from the import with the same
   settings (the train queries only, the bi-encoder for ``--epochs`` epochs, seed 42), and evaluate all
   four on the test queries: the pairs should agree within 0.005 nDCG@10;
3. score the packaged MiniLM zero-shot as a bi-encoder (its cross-encoder head would be random) on the
   valid and test candidates, write that as a TREC run and import it as a second teacher's cache, then
   ``distill fuse-teacher`` both caches (with BM25, weights chosen on valid) and evaluate each teacher
   alone and the ensemble on valid and test.

Every step is skipped when its output exists, so a stopped run resumes; ``<out>/bench_import.json``
records the command, each step's seconds, the CPU and the tables.

    python scripts/bench_import.py --pipeline bench_out/scifact [--quick] [--write-doc docs/results/import.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import cpu_description, minilm_path, quiet_logging, run_distill, save_results

METRIC = "nDCG@10"
TARGET = 0.005  # the largest difference in test nDCG@10 between a student of the import and of the original


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, required=True,
                        help="A finished pipeline folder (its cache/, runs/, data/ and pipeline.json).")
    parser.add_argument("--cache", type=Path, default=None, help="The trained teacher's cache [PIPELINE/cache].")
    parser.add_argument("--zero-shot", default=None, help="The second teacher, a sentence-transformers folder "
                        "scored as a bi-encoder [the packaged all-MiniLM-L6-v2].")
    parser.add_argument("--epochs", type=float, default=1.0, help="Bi-encoder students' epochs [1].")
    parser.add_argument("--out", type=Path, default=None, help="Work folder [bench_out/import(_quick)].")
    parser.add_argument("--quick", action="store_true", help="Bi-encoders for a quarter epoch at 64 tokens.")
    parser.add_argument("--write-doc", type=Path, default=None, help="Also write the tables as a markdown page.")
    return parser.parse_args()


class Steps:
    """Runs each step unless its output exists; records the seconds of those that ran, keeping those an earlier
    run of the bench in ``out`` recorded (a resumed run reports every step's time)."""

    def __init__(self, out: Path) -> None:
        earlier = out / "bench_import.json"
        self.seconds: dict[str, float] = json.loads(earlier.read_text())["results"]["seconds"] \
            if earlier.exists() else {}

    def __call__(self, name: str, output: Path, work) -> None:
        if output.exists():
            print(f"done already: {name} ({output})")
            return
        start = time.perf_counter()
        work()
        self.seconds[name] = round(time.perf_counter() - start, 1)


def pipeline_settings(pipeline: Path) -> dict:
    """The settings the pipeline's students used (its pipeline.json), which the bench's students keep."""
    config = json.loads((pipeline / "pipeline.json").read_text())["config"]
    return {"max_length": config["max_length"], "negatives": config.get("bi_negatives") or config["negatives"],
            "loss": config["bi_loss"], "lr": config["student_lr"], "init": config.get("init") or minilm_path()}


def train_students(steps: Steps, caches: dict[str, Path], data: Path, out: Path, bi: dict) -> dict[str, Path]:
    """LightGBM and the bi-encoder from each cache, the same settings for both; returns name -> folder."""
    models = {}
    for source, cache in caches.items():
        common = ["train-student", "--cache", cache, "--data", data, "--split", "train", "--seed", 42]
        folder = out / "models" / f"lightgbm_{source}"
        steps(f"lightgbm_{source}", folder, lambda f=folder, c=common: run_distill(
            [*c, "--student", "lightgbm", "--out", f]))
        models[f"lightgbm_{source}"] = folder
        folder = out / "models" / f"bi_encoder_{source}"
        steps(f"bi_encoder_{source}", folder, lambda f=folder, c=common: run_distill(
            [*c, "--student", "bi-encoder", "--init", bi["init"], "--loss", bi["loss"], "--negatives",
             bi["negatives"], "--max-length", bi["max_length"], "--epochs", bi["epochs"], "--lr", bi["lr"],
             "--out", f]))
        models[f"bi_encoder_{source}"] = folder
    return models


def score_zero_shot(model: str, data: Path, runs: list[Path], out: Path) -> None:
    """The zero-shot model's scores of every candidate of ``runs``, as one TREC run (a bi-encoder: the cosine of
    the query's and the document's embeddings); distill has no command that writes a reranked run."""
    import polars as pl

    from distill.data.beir import load_beir
    from distill.data.runs import read_run, write_run
    from distill.rankers.loading import load_ranker

    ranker = load_ranker(model, name="zero_shot")
    scored = []
    for run in runs:
        dataset = load_beir(data, run.stem)
        ranker.prepare(dataset)
        scored.append(ranker.rerank(dataset, read_run(run)).select("qid", "docid", "score"))
    write_run(pl.concat(scored), out, tag="zero_shot")


def evaluate(steps: Steps, data: Path, runs: Path, split: str, rankers: dict[str, Path | str], out: Path) -> dict:
    """``distill evaluate`` of ``rankers`` on ``split``'s candidates; returns ranker -> nDCG@10."""
    import polars as pl

    folder = out / f"eval_{split}"
    argv = [a for name, spec in rankers.items() for a in ("--ranker", f"{name}={spec}")]
    steps(f"evaluate_{split}", folder, lambda: run_distill(
        ["evaluate", "--data", data, "--split", split, "--run", runs / f"{split}.trec", *argv, "--baseline", "bm25",
         "--out", folder]))
    summary = pl.read_parquet(folder / "summary.parquet")
    return {row["ranker"]: round(row[METRIC], 4) for row in summary.select("ranker", METRIC).to_dicts()}


def round_trip(steps: Steps, cache: Path, pipeline: Path, out: Path) -> tuple[Path, dict]:
    """Export ``cache`` as a TREC run and import it back; returns the imported cache and how the two compare."""
    from distill.cache.store import read_scores

    run, imported = out / "teacher.trec", out / "imported"
    steps("export", run, lambda: run_distill(["cache", "export", cache, "--format", "trec", "--out", run]))
    queries = pipeline / "pseudo_queries.jsonl"  # the pipeline's unjudged training queries, when it made them
    extra = ["--queries", queries] if queries.exists() else []
    steps("import", imported, lambda: run_distill(["cache", "import", run, "--data", pipeline / "data",
                                                   "--teacher-name", "exported", *extra, "--out", imported]))
    original, copy = read_scores(cache)[0], read_scores(imported)[0]
    joined = original.join(copy, on=["qid", "docid"], how="full", suffix="_imported")
    both = joined.drop_nulls()
    return imported, {"original_pairs": original.height, "imported_pairs": copy.height, "common_pairs": both.height,
                      "max_abs_score_difference": float((both["score"] - both["score_imported"]).abs().max())}


def ensemble(steps: Steps, cache: Path, pipeline: Path, zero_shot: str, out: Path) -> tuple[Path, Path, dict]:
    """The zero-shot model scored into a cache (via a run and ``cache import``), then both teachers fused with BM25
    on valid; returns the zero-shot cache, the fused one and what fusion chose (each teacher alone on valid)."""
    data, runs = pipeline / "data", [pipeline / "runs" / f"{split}.trec" for split in ("valid", "test")]
    run, second, fused = out / "zero_shot.trec", out / "zero_shot_cache", out / "ensemble"
    steps("score_zero_shot", run, lambda: score_zero_shot(zero_shot, data, runs, run))
    steps("import_zero_shot", second, lambda: run_distill(
        ["cache", "import", run, "--data", data, "--teacher-name", "minilm-zero-shot", "--out", second]))
    steps("fuse", fused, lambda: run_distill(
        ["fuse-teacher", "--cache", cache, "--cache", second, "--data", data, "--valid-split", "valid",
         *[a for r in runs for a in ("--run", r)], "--out", fused]))
    teacher = json.loads((fused / "manifest.json").read_text())["teacher"]
    return second, fused, {"weights": teacher["weights"], "chosen_on": teacher["chosen_on"]}


def main() -> None:
    args = parse_args()
    quiet_logging()
    pipeline = args.pipeline
    cache, out = args.cache or pipeline / "cache", args.out or Path("bench_out") / f"import{'_quick' * args.quick}"
    out.mkdir(parents=True, exist_ok=True)
    data, runs, steps, start = pipeline / "data", pipeline / "runs", Steps(out), time.perf_counter()
    bi = {**pipeline_settings(pipeline), "epochs": 0.25 if args.quick else args.epochs}
    if args.quick:
        bi["max_length"] = 64
    imported, trip = round_trip(steps, cache, pipeline, out)
    models = train_students(steps, {"original": cache, "imported": imported}, data, out, bi)
    second, fused, chosen = ensemble(steps, cache, pipeline, args.zero_shot or minilm_path(), out)
    teachers = {"bm25": "bm25", "teacher": cache, "zero_shot": second, "ensemble": fused}
    test = evaluate(steps, data, runs, "test", {**teachers, "imported": imported, **models}, out)
    valid = evaluate(steps, data, runs, "valid", teachers, out)
    pairs = {kind: {"original": test[f"{kind}_original"], "imported": test[f"{kind}_imported"],
                    "difference": round(test[f"{kind}_imported"] - test[f"{kind}_original"], 4)}
             for kind in ("lightgbm", "bi_encoder")}
    dataset = json.loads((pipeline / "pipeline.json").read_text())["config"].get("data") or "the built-in dataset"
    results = {"pipeline": str(pipeline), "dataset": dataset, "cache": str(cache),
               "zero_shot": args.zero_shot or minilm_path(), "quick": args.quick,
               "bi_encoder": {k: str(v) for k, v in bi.items()}, "round_trip": trip,
               "students": pairs, "within_target": all(abs(p["difference"]) <= TARGET for p in pairs.values()),
               "teachers": {name: {"valid": valid[name], "test": test[name]} for name in teachers},
               "fusion": chosen, "test": test, "seconds": steps.seconds,
               "wall_seconds_this_run": round(time.perf_counter() - start, 1), "cpu": cpu_description()}
    path = save_results(out, "bench_import", results)
    if args.write_doc:
        write_doc(json.loads(path.read_text()), args.write_doc)


def write_doc(saved: dict, path: Path) -> None:
    """The results as a markdown page: the round trip, the students' pairs and the ensemble."""
    r = saved["results"]
    trip, fusion = r["round_trip"], r["fusion"]
    lines = ["# Imported teacher scores: a round trip, and two teachers at once", "",
             f"`{saved['command']}` (finished {saved['finished']}; CPU {r['cpu'].get('model')}, "
             f"{r['cpu'].get('cores')} cores shared with other jobs, flags {', '.join(r['cpu'].get('flags', []))}; "
             f"the steps took {sum(r['seconds'].values()):.0f} s of wall time in all: "
             + ", ".join(f"{name} {seconds:.0f}" for name, seconds in r["seconds"].items()) + ").", "",
             f"On {r['dataset']} (the pipeline `{r['pipeline']}`, its split view and candidates), the teacher cache "
             f"`{r['cache']}` exported as a TREC run and imported back: {trip['imported_pairs']} of "
             f"{trip['original_pairs']} pairs, the largest score difference {trip['max_abs_score_difference']:g}; as "
             f"rankers on test, nDCG@10 {r['test']['teacher']:.4f} (original) and {r['test']['imported']:.4f} "
             "(import).", "",
             "| student (test nDCG@10) | from the original cache | from the import | difference |", "|---|---|---|---|"]
    lines += [f"| {kind} | {p['original']:.4f} | {p['imported']:.4f} | {p['difference']:+.4f} |"
              for kind, p in r["students"].items()]
    lines += ["", f"Within {TARGET}: {'yes' if r['within_target'] else 'no'}. Bi-encoder settings: "
              + ", ".join(f"{k} {v}" for k, v in r["bi_encoder"].items()) + ".", "",
              "| teacher (nDCG@10) | valid | test |", "|---|---|---|"]
    lines += [f"| {name} | {v['valid']:.4f} | {v['test']:.4f} |" for name, v in r["teachers"].items()]
    lines += ["", f"The ensemble is `fuse-teacher` of the teacher's cache and the zero-shot model's, with BM25: "
              f"weights {fusion['weights']} chosen on valid ({fusion['chosen_on']['value']:.4f} there; alone: "
              + ", ".join(f"{k} {v:.4f}" for k, v in fusion["chosen_on"]["alone"].items()) + "). The zero-shot "
              f"teacher is `{r['zero_shot']}` loaded by `distill.rankers.loading.load_ranker` (a sentence-transformers "
              "folder: a bi-encoder, the cosine of query and document embeddings), its scores of the valid and test "
              "candidates written as a TREC run and brought in with `distill cache import` (no distill command writes "
              "a reranked run)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
