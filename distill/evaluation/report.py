"""The evaluation report: one self-contained ``report.html`` plus a ``report.md`` summary.

The HTML carries its figures as base64 PNG data URIs and its style inline, so it opens
offline and can be mailed as one file. Figures: quality vs latency with the Pareto
frontier, per-query metric deltas vs the baseline, teacher-vs-student scores, LightGBM
feature importance and the reliability of a calibrated cascade's relevance scores. Each figure is
drawn by one small function.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl

from distill.core.io import write_text_atomic
from distill.core.schema import DOCID, QID, SCORE
from distill.evaluation.calibration import CALIBRATION_DEPTH, ECE, PRECISION_AT
from distill.evaluation.depth import depth_table
from distill.evaluation.latency import LatencyResult
from distill.evaluation.runner import RANKER, EvaluationResult, markdown_table

MAX_SCATTER_POINTS = 5000
MAX_FEATURES = 30

K = TypeVar("K")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222;
       overflow-wrap: anywhere; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; overflow-wrap: normal; }
td { white-space: nowrap; }
th { background: #f0f0f0; vertical-align: bottom; max-width: 9em; }
th:first-child, td:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; max-width: 100%; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""
MISSING = "–"


# ---------------------------------------------------------------- tables and points

def comparison_table(evaluation: EvaluationResult, latency: dict[str, LatencyResult]) -> pl.DataFrame:
    """One row per ranker: metric means, the first metric's delta and corrected t-test p-value
    vs the baseline, agreement with the teacher, and latency (prepared), parameters, size."""
    primary = evaluation.metrics[0]
    keep = [c for c in ("kendall_tau", "overlap@10", ECE, PRECISION_AT) if c in evaluation.summary.columns]
    table = evaluation.summary.select(RANKER, *evaluation.metrics, "wins", "losses", "ties", *keep)
    tests = evaluation.significance.filter(pl.col("metric") == primary).select(
        RANKER, pl.col("mean_delta").alias(f"delta {primary}"),
        pl.col("p_ttest_adj").alias("p (t-test, adj.)"))
    table = table.join(tests, on=RANKER, how="left", maintain_order="left")
    chosen = _latency_per_ranker(latency)
    if chosen:
        timing = pl.DataFrame([
            {RANKER: r.ranker, "p50 ms": r.p50_ms, "p95 ms": r.p95_ms, "parameters": r.n_parameters,
             "size MB": r.size_bytes / 1e6}
            for r in chosen.values()
        ])
        table = table.join(timing, on=RANKER, how="left", maintain_order="left")
    return table


def _latency_per_ranker(latency: dict[str, LatencyResult]) -> dict[str, LatencyResult]:
    """Each ranker's latency for the table: the prepared measurement when there is one."""
    chosen: dict[str, LatencyResult] = {}
    for result in latency.values():
        if result.ranker not in chosen or (result.prepared and not chosen[result.ranker].prepared):
            chosen[result.ranker] = result
    return chosen


def quality_latency_points(evaluation: EvaluationResult,
                           latency: dict[str, LatencyResult]) -> dict[str, tuple[float, float]]:
    """``label -> (p50 ms, mean of the first metric)`` for every latency measurement."""
    summary = evaluation.summary
    quality = dict(zip(summary[RANKER].to_list(), summary[evaluation.metrics[0]].to_list(), strict=True))
    return {label: (r.p50_ms, quality[r.ranker]) for label, r in latency.items() if r.ranker in quality}


def pareto_frontier(points: Mapping[K, tuple[float, float]], tie_break: Callable[[K], Any] | None = None) -> list[K]:
    """Keys of the points ``key -> (latency, quality)`` that no other point beats on both latency
    (lower) and quality (higher), fastest first.

    Sorted by latency, then quality (higher first), then ``tie_break(key)`` (None: the given order),
    a point is on the frontier when its quality beats every point before it. The one rule of the
    report's frontier and the cascade search's (:mod:`distill.cascade.simulation`).
    """
    ranked = sorted(points.items(), key=lambda item: (item[1][0], -item[1][1], tie_break(item[0]) if tie_break else 0))
    frontier, best = [], -math.inf
    for key, (_, quality) in ranked:
        if quality > best:
            frontier.append(key)
            best = quality
    return frontier


def metric_deltas(evaluation: EvaluationResult, ranker: str, metric: str) -> np.ndarray:
    """Per-query ``metric(ranker) - metric(baseline)``."""
    wide = evaluation.per_query.filter(pl.col("metric") == metric).pivot(RANKER, index=QID, values="value")
    return (wide[ranker] - wide[evaluation.baseline]).to_numpy()


# ---------------------------------------------------------------- figures

def _png(fig) -> str:
    """A matplotlib figure as a base64 PNG (Agg renderer, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 5.5, height: float = 3.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def quality_latency_figure(points: dict[str, tuple[float, float]], frontier: list[str], metric: str) -> str:
    fig, ax = _figure(6.5, 4.5)
    for label, (ms, quality) in points.items():
        ax.scatter([max(ms, 1e-3)], [quality], color="tab:red" if label in frontier else "tab:blue", zorder=3)
        ax.annotate(label, (max(ms, 1e-3), quality), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xs = [max(points[label][0], 1e-3) for label in frontier]
    ax.plot(xs, [points[label][1] for label in frontier], drawstyle="steps-post", color="tab:red",
            label="Pareto frontier")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query (ms, log scale)")
    ax.set_ylabel(metric)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def delta_histogram_figure(deltas: np.ndarray, ranker: str, baseline: str, metric: str) -> str:
    fig, ax = _figure()
    span = max(float(np.abs(deltas).max()) if len(deltas) else 0.0, 1e-6)
    ax.hist(deltas, bins=np.linspace(-span, span, 22), color="tab:blue", edgecolor="white")
    ax.axvline(0.0, color="black", linewidth=0.8)
    wins, losses = int((deltas > 0).sum()), int((deltas < 0).sum())
    ax.set_title(f"{ranker} vs {baseline}: {wins} better, {losses} worse, {len(deltas) - wins - losses} tied",
                 fontsize=9)
    ax.set_xlabel(f"per-query delta {metric}")
    ax.set_ylabel("queries")
    return _png(fig)


def score_scatter_figure(student: pl.DataFrame, teacher: pl.DataFrame, ranker: str, teacher_name: str) -> str:
    pairs = (
        student.select(QID, DOCID, pl.col(SCORE).alias("student"))
        .join(teacher.select(QID, DOCID, pl.col(SCORE).alias("teacher")), on=[QID, DOCID])
        .filter(pl.col("student").is_finite() & pl.col("teacher").is_finite())
    )
    if pairs.height > MAX_SCATTER_POINTS:
        pairs = pairs.sample(MAX_SCATTER_POINTS, seed=0)
    fig, ax = _figure()
    ax.scatter(pairs["teacher"].to_numpy(), pairs["student"].to_numpy(), s=4, alpha=0.3)
    ax.set_xlabel(f"{teacher_name} score")
    ax.set_ylabel(f"{ranker} score")
    ax.set_title(f"{ranker} vs {teacher_name} ({pairs.height} candidates shown)", fontsize=9)
    return _png(fig)


def feature_importance_figure(importance: dict[str, float], ranker: str) -> str:
    top = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:MAX_FEATURES]
    fig, ax = _figure(5.5, 1.0 + 0.25 * len(top))
    ax.barh([name for name, _ in reversed(top)], [value for _, value in reversed(top)], color="tab:green")
    ax.set_xlabel("total gain")
    ax.set_title(f"{ranker}: feature importance", fontsize=9)
    return _png(fig)


def reliability_figure(table: pl.DataFrame, ranker: str) -> str:
    """Observed fraction relevant against the mean predicted probability per bin (dot size: documents),
    with the diagonal a calibrated ranker follows."""
    fig, ax = _figure(4.5, 4.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    sizes = 20 + 180 * table["documents"].to_numpy() / max(int(table["documents"].max()), 1)
    ax.plot(table["predicted"].to_numpy(), table["observed"].to_numpy(), color="tab:blue", linewidth=0.8)
    ax.scatter(table["predicted"].to_numpy(), table["observed"].to_numpy(), s=sizes, color="tab:blue", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("relevance score (mean per bin)")
    ax.set_ylabel("fraction relevant")
    ax.set_title(f"{ranker}: reliability, top {CALIBRATION_DEPTH} per query", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def report_figures(evaluation: EvaluationResult, points: dict[str, tuple[float, float]], frontier: list[str],
                   feature_importance: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """``(caption, base64 PNG)`` for every figure of the report."""
    metric = evaluation.metrics[0]
    figures = []
    if points:
        figures.append((f"{metric} vs p50 latency; red: Pareto frontier",
                        quality_latency_figure(points, frontier, metric)))
    for ranker in evaluation.rankers:
        if ranker != evaluation.baseline:
            figures.append((f"{ranker}: per-query {metric} delta vs {evaluation.baseline}",
                            delta_histogram_figure(metric_deltas(evaluation, ranker, metric), ranker,
                                                   evaluation.baseline, metric)))
    for ranker in students(evaluation):
        figures.append((f"{ranker} vs {evaluation.teacher} scores",
                        score_scatter_figure(evaluation.runs[ranker], evaluation.runs[evaluation.teacher],
                                             ranker, evaluation.teacher)))
    for ranker, importance in feature_importance.items():
        figures.append((f"{ranker}: LightGBM feature importance (gain)",
                        feature_importance_figure(importance, ranker)))
    if evaluation.calibration is not None:
        for (ranker,), table in evaluation.calibration.partition_by(RANKER, as_dict=True, maintain_order=True).items():
            figures.append((f"{ranker}: reliability of its relevance scores", reliability_figure(table, ranker)))
    return figures


def students(evaluation: EvaluationResult) -> list[str]:
    """Rankers compared with the teacher: all but the teacher and the baseline."""
    if evaluation.teacher is None:
        return []
    return [r for r in evaluation.rankers if r not in (evaluation.teacher, evaluation.baseline)]


# ---------------------------------------------------------------- rendering

def format_p(value: float) -> str:
    """A p-value as people read it: ``p < 0.001`` below a thousandth, three decimals otherwise."""
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def format_value(value: Any, column: str = "") -> str:
    """One cell for reading: p-values as :func:`format_p`, floats with 3 decimals (none from 1,000),
    integers with thousands separators, missing values as a dash (never ``null`` or ``NaN``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if column.startswith(("p_", "p ")):
            return format_p(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def display_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every cell formatted by :func:`format_value` (all columns strings)."""
    return pl.DataFrame({column: [format_value(v, column) for v in frame[column].to_list()]
                         for column in frame.columns}, schema={c: pl.String for c in frame.columns})


def html_table(frame: pl.DataFrame) -> str:
    """A table that scrolls inside its own box when wider than the page, never the page itself."""
    shown = display_frame(frame)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in shown.iter_rows())
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def markdown_report_table(frame: pl.DataFrame) -> str:
    """A GitHub Markdown table with cells formatted by :func:`format_value`."""
    return markdown_table(display_frame(frame))


def _notes(evaluation: EvaluationResult, latency: dict[str, LatencyResult]) -> list[str]:
    notes = [
        f"Dataset: {evaluation.dataset or 'n/a'}; {evaluation.summary['n_queries'][0]} queries; "
        f"baseline: {evaluation.baseline}; teacher: {evaluation.teacher or 'none'}.",
        f"p-values: paired t-test (scipy) vs the baseline on {evaluation.metrics[0]}, "
        f"{evaluation.correction} correction across {evaluation.significance[RANKER].n_unique()} ranker(s); "
        "wins/losses/ties count queries.",
    ]
    if latency:
        any_result = next(iter(latency.values()))
        notes.append(f"Latency: {any_result.n_queries} queries x top-{any_result.k} candidates, "
                     f"torch threads: {any_result.threads}, CPUs: {any_result.cpu_count}; "
                     "'bm25' times the lookup of the candidates' scores; stored scores of no model "
                     "(run files, a fused teacher) are not timed.")
    return notes


def _depth_caption(evaluation: EvaluationResult) -> str:
    return (f"{evaluation.metrics[0]} when each ranker reranks only the candidate run's top k. A ranker that "
            "falls as k grows ranks deeper distractors above relevant documents: rerank fewer with it.")


def _calibration_caption() -> str:
    return (f"Relevance scores (probabilities of relevance) of each query's top {CALIBRATION_DEPTH} documents, "
            "in equal-width bins: predicted is the bins' mean relevance score, observed the fraction relevant "
            f"(qrels grade > 0); {ECE} weighs each bin's |predicted - observed| by its documents; "
            f"{PRECISION_AT} is the fraction relevant among those scored at least 0.5.")


def _latency_frame(latency: dict[str, LatencyResult]) -> pl.DataFrame:
    return pl.DataFrame([{"label": label, **asdict(r)} for label, r in latency.items()])


def render_html(title: str, evaluation: EvaluationResult, table: pl.DataFrame,
                latency: dict[str, LatencyResult], frontier: list[str], figures: list[tuple[str, str]],
                configs: dict[str, dict]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>", "<ul>"]
    parts += [f"<li>{html.escape(n)}</li>" for n in _notes(evaluation, latency)]
    parts += ["</ul>", "<h2>Comparison</h2>", html_table(table)]
    if frontier:
        parts += ["<h2>Pareto frontier (quality vs p50 latency)</h2>", '<ol class="pareto">']
        parts += [f"<li>{html.escape(label)}</li>" for label in frontier]
        parts += ["</ol>"]
    if latency:
        parts += ["<h2>Latency</h2>", html_table(_latency_frame(latency))]
    if evaluation.depth is not None:
        parts += ["<h2>Rerank depth</h2>", f"<p>{html.escape(_depth_caption(evaluation))}</p>",
                  html_table(depth_table(evaluation.depth))]
    if evaluation.calibration is not None:
        parts += ["<h2>Calibration</h2>", f"<p>{html.escape(_calibration_caption())}</p>",
                  html_table(evaluation.calibration)]
    parts += ["<h2>Significance</h2>", html_table(evaluation.significance), "<h2>Figures</h2>"]
    parts += [f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{png}">'
              f"<figcaption>{html.escape(caption)}</figcaption></figure>" for caption, png in figures]
    if configs:
        parts += ["<h2>Configurations</h2>"]
        for name, config in configs.items():
            pretty = html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))
            parts += [f"<details><summary>{html.escape(name)}</summary><pre>{pretty}</pre></details>"]
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    body = "\n".join(parts)
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>\n{body}\n</body></html>\n'


def render_markdown(title: str, evaluation: EvaluationResult, table: pl.DataFrame,
                    latency: dict[str, LatencyResult], frontier: list[str]) -> str:
    lines = [f"# {title}", ""] + [f"- {n}" for n in _notes(evaluation, latency)] + ["", "## Comparison", "",
                                                                                    markdown_report_table(table), ""]
    if frontier:
        lines += ["## Pareto frontier (quality vs p50 latency)", ""]
        lines += [f"{i}. {label}" for i, label in enumerate(frontier, start=1)] + [""]
    if evaluation.depth is not None:
        lines += ["## Rerank depth", "", _depth_caption(evaluation), "",
                  markdown_report_table(depth_table(evaluation.depth)), ""]
    if evaluation.calibration is not None:
        lines += ["## Calibration", "", _calibration_caption(), "", markdown_report_table(evaluation.calibration), ""]
    lines += ["Figures and configurations: report.html", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, evaluation: EvaluationResult,
                 latency: dict[str, LatencyResult] | None = None, configs: dict[str, dict] | None = None,
                 feature_importance: dict[str, dict[str, float]] | None = None,
                 title: str = "distill evaluation") -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (atomically); return their paths.

    ``latency`` maps a label to a measurement (a ranker may have several, e.g. a bi-encoder
    with and without precomputed document embeddings); ``configs`` maps a ranker to its
    ``get_config_dict()``; ``feature_importance`` maps a LightGBM ranker to its features' gains.
    Teacher-vs-student scatters use ``evaluation.runs``.
    """
    latency = latency or {}
    table = comparison_table(evaluation, latency)
    points = quality_latency_points(evaluation, latency)
    frontier = pareto_frontier(points)
    figures = report_figures(evaluation, points, frontier, feature_importance or {})
    out = Path(out_dir)
    html_path, md_path = out / "report.html", out / "report.md"
    page = render_html(title, evaluation, table, latency, frontier, figures, configs or {})
    write_text_atomic(html_path, page)
    write_text_atomic(md_path, render_markdown(title, evaluation, table, latency, frontier))
    return html_path, md_path
