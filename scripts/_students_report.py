"""docs/results/<dataset>.md from one ``bench_students.py`` work folder: one teacher, one table.

Everything printed is read from the folder the run wrote (``pipeline.json``, ``cascade.json``,
``eval/evaluation.json``, ``eval/latency.json``, ``bench_students.json``), so rendering again
never changes a figure; the targets are those of issue 23, checked on the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

# issue 23's SciFact targets: share of the teacher's test nDCG@10 a student must reach
TARGETS = {"ce_student": 0.95, "bi_encoder": 0.97, "cascade": 0.97}
CASCADE_LATENCY_SHARE = 0.10  # the cascade runs within 10% of the teacher's latency
# the pipeline's step order (pipeline.json keeps its steps sorted by name); a step's name starts with one
ORDER = ("pseudo-queries", "candidates-train", "candidates-valid", "candidates-test", "train-teacher",
         "score-train", "score-valid", "score-test", "fuse-teacher", "student-cross-encoder", "student-bi-encoder",
         "student-lightgbm-", "student-lightgbm", "cascade-build", "cascade-run", "evaluate", "report")


def _load(out: Path) -> dict:
    def read(name: str) -> dict:
        return json.loads((out / name).read_text(encoding="utf-8"))

    return {"pipeline": read("pipeline.json"), "cascade": read("cascade.json"),
            "evaluation": read("eval/evaluation.json"), "latency": read("eval/latency.json"),
            "bench": read("bench_students.json") if (out / "bench_students.json").exists() else {}}


def _by_ranker(evaluation: dict) -> tuple[dict, dict]:
    """Test summary rows and nDCG@10 significance rows (against BM25), by ranker name."""
    summary = {row["ranker"]: row for row in evaluation["summary"]}
    sig = {row["ranker"]: row for row in evaluation["significance"] if row["metric"] == "nDCG@10"}
    return summary, sig


def _p(p: float | None) -> str:
    return "" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def results_table(ctx: dict) -> list[str]:
    """Test nDCG@10 per ranker with its share of the teacher, wins/losses and Holm p against BM25, latency."""
    evaluation, latency = ctx["evaluation"], ctx["latency"]
    summary, sig = _by_ranker(evaluation)
    teacher = summary["teacher"]["nDCG@10"]
    fused = summary.get("fused_teacher", {}).get("nDCG@10")
    k = next(iter(latency.values()))["k"]
    head = ["ranker", "nDCG@10", "RR@10", "R@100", "share of the teacher"]
    head += ["share of the fused teacher"] if fused else []
    head += ["wins/losses vs BM25", f"p vs BM25 ({evaluation['correction']})", f"p50 ms/query (top {k}, 1 thread)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary.items():
        s = sig.get(name, {})
        cells = [name, f"{row['nDCG@10']:.3f}", f"{row['RR@10']:.3f}", f"{row['R@100']:.3f}",
                 f"{row['nDCG@10'] / teacher:.1%}"]
        cells += [f"{row['nDCG@10'] / fused:.1%}"] if fused else []
        cells += [f"{s['wins']}/{s['losses']}" if s else "", _p(s.get("p_ttest_adj")),
                  _ms(latency.get(name, {}).get("p50_ms"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(ctx: dict) -> list[str]:
    """Each of issue 23's SciFact targets, met or not, with the figures that decide it."""
    rows, sig = _by_ranker(ctx["evaluation"])
    summary = {name: row["nDCG@10"] for name, row in rows.items()}
    teacher, bm25 = summary["teacher"], summary["bm25"]
    lines = []
    for name, share in TARGETS.items():
        if name in summary:
            got = summary[name] / teacher
            verdict = "met" if got >= share else "missed"
            lines.append(f"- {name} ≥ {share:.0%} of the teacher: {got:.1%} — **{verdict}**")
    if "lightgbm" in sig:
        s = sig["lightgbm"]
        p, verdict = s["p_ttest_adj"], "met" if summary["lightgbm"] > bm25 and s["p_ttest_adj"] < 0.05 else "missed"
        lines.append(f"- lightgbm above BM25 with Holm p < 0.05: {summary['lightgbm']:.3f} vs {bm25:.3f}, "
                     f"p {_p(p) if p < 0.001 else '= ' + _p(p)} — **{verdict}**")
    lat = ctx["latency"]
    if "cascade" in lat and "teacher" in lat:
        ratio = lat["cascade"]["p50_ms"] / lat["teacher"]["p50_ms"]
        lines.append(f"- cascade within {CASCADE_LATENCY_SHARE:.0%} of the teacher's latency: p50 "
                     f"{_ms(lat['cascade']['p50_ms'])} ms vs {_ms(lat['teacher']['p50_ms'])} ms ({ratio:.1%}) — "
                     f"**{'met' if ratio <= CASCADE_LATENCY_SHARE else 'missed'}**")
    return lines


def choices(ctx: dict) -> list[str]:
    """What the pipeline chose on validation: the teacher students learn from, rounds, LightGBM's weight."""
    pipeline = ctx["pipeline"]
    lines = []
    choice = pipeline.get("teacher_choice")
    if choice:
        val = choice["validation"]
        lines.append(f"- Students learn from the **{choice['teacher']} teacher** (weights {choice['weights']}): "
                     f"valid {val['metric']} {val['value']:.3f} over {val['queries']} queries; the trained teacher "
                     f"alone {val['alone']['teacher']:.3f}, BM25 {val['alone']['bm25']:.3f}.")
    for name, val in pipeline.get("students", {}).items():
        extra = f", round {val['kept_round']} kept" if val.get("kept_round") else ""
        if val.get("chosen_from"):
            extra += "; candidates " + ", ".join(f"`{Path(p).name}` {v:.3f}" for p, v in val["chosen_from"].items())
        flag = " **collapsed: " + "; ".join(val["problems"]) + "**" if val.get("collapsed") else ""
        lines.append(f"- {name}: valid {val['metric']} {val['value']:.3f} (BM25 {val['first_stage']:.3f})"
                     f"{extra}.{flag}")
    budget = pipeline.get("budget")
    if budget:
        lines.append(f"- Cascade `{ctx['cascade']['cascade']}`, searched on valid within {budget['budget_ms']:.0f} ms "
                     f"per query ({budget['share']:.0%} of the {budget['share_of']}'s expected "
                     f"{budget['teacher_expected_ms']:.0f} ms over the top {budget['k']}, {budget['threads']} thread).")
    return lines


def steps(ctx: dict) -> list[str]:
    """Wall and CPU time of each step, summed over its attempts (a step stopped and resumed)."""
    rows = ctx["pipeline"]["steps"]
    rank = lambda name: next((i for i, p in enumerate(ORDER) if name.startswith(p)), len(ORDER))  # noqa: E731
    rows = dict(sorted(rows.items(), key=lambda item: (rank(item[0]), item[0])))
    lines = ["| step | wall min | CPU min | attempts | command |", "|---|---|---|---|---|"]
    for name, s in rows.items():
        # a step with no count was recorded before the pipeline summed attempts: its last one only
        attempts = s.get("attempts", "last only")
        cpu = "not measured" if s["cpu_seconds"] is None else f"{s['cpu_seconds'] / 60:.1f}"
        lines.append(f"| {name} | {s['seconds'] / 60:.1f} | {cpu} | {attempts} | `{s['command']}` |")
    wall = sum(s["seconds"] for s in rows.values()) / 3600
    cpu = sum(s["cpu_seconds"] or 0.0 for s in rows.values()) / 3600
    unknown = any(s["cpu_seconds"] is None for s in rows.values())
    lines.append(f"| total | {wall:.2f} h | {'≥ ' if unknown else ''}{cpu:.2f} h | | |")
    return lines


def render(out: Path, machine: str, notes: str = "") -> str:
    """The markdown page of the run in ``out``."""
    ctx = _load(out)
    cfg = ctx["pipeline"]["config"]
    bench = ctx["bench"]
    command = bench.get("command", f"python scripts/bench_students.py --data {cfg['data']}")
    versions = ctx["pipeline"].get("versions", {})
    teacher = "the one `train-teacher` made in this run" if cfg.get("teacher") is None else f"`{cfg['teacher']}`"
    lines = [f"# Students of one teacher on {Path(cfg['data']).name}: the default recipe", "",
             f"Command: `{command}` (every step resumes where it stopped; rerun it to continue). "
             f"Finished {bench.get('finished', 'not yet')}. Machine: {machine}.", "",
             f"Test split, every ranker reranking the same BM25 top {cfg['test_k']} per query; the teacher is "
             f"{teacher}, and every student learns from its cache, fused with BM25 where that was better on "
             "validation (below). Significance: paired t-test against BM25, Holm-adjusted over the rankers. "
             "Defaults come from `PipelineConfig`; nothing here was tuned on test.", ""]
    lines += results_table(ctx) + ["", "## Targets (issue 23)", ""] + targets(ctx)
    lines += ["", "## Chosen on validation", ""] + choices(ctx)
    lines += ["", "## Steps", ""] + steps(ctx)
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."]
    return "\n".join(lines) + "\n"
