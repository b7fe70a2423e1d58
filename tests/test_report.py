"""The HTML report is one self-contained page: it parses, every image is an embedded PNG,
the expected figures are there, and the Pareto frontier is listed; the Markdown has the table."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import polars as pl
import pytest

from distill.bm25 import bm25_run
from distill.data import load_beir
from distill.evaluate import evaluate_runs
from distill.latency import LatencyResult
from distill.report import pareto_frontier, write_report
from distill.schema import DOCID, QID, RELEVANCE, SCORE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """Collects image sources, the Pareto list and any reference to outside resources."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.pareto: list[str] = []
        self.external: list[str] = []
        self._in_pareto = False
        self._in_item = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe") or any(str(v).startswith("http") for v in attrs.values()):
            self.external.append(tag)
        if tag == "ol" and attrs.get("class") == "pareto":
            self._in_pareto = True
        self._in_item = self._in_pareto and tag == "li"

    def handle_endtag(self, tag):
        if tag == "ol":
            self._in_pareto = False
        self._in_item = False

    def handle_data(self, data):
        if self._in_item:
            self.pareto.append(data)


def _latency(ranker: str, p50: float) -> LatencyResult:
    return LatencyResult(ranker=ranker, prepared=True, k=10, n_queries=8, p50_ms=p50, p95_ms=p50 * 2,
                         p99_ms=p50 * 3, mean_ms=p50, pairs_per_s=10_000 / p50, n_parameters=1000,
                         size_bytes=2_000_000, prepare_s=0.0, threads=1, cpu_count=2)


@pytest.fixture(scope="module")
def runs(tiny_beir) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """Qrels and four runs: bm25; a teacher ordering candidates by relevance; 'good' agrees
    with the teacher on half of the queries; 'reversed' inverts bm25."""
    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 10).select(QID, DOCID, SCORE)
    graded = run.join(dataset.qrels, on=[QID, DOCID], how="left").with_columns(pl.col(RELEVANCE).fill_null(0))
    teacher = graded.select(QID, DOCID, (pl.col(RELEVANCE) * 10 + pl.col(SCORE) / 100).alias(SCORE))
    first_half = pl.col(QID).is_in(dataset.queries[QID].head(4).to_list())
    good = graded.select(QID, DOCID, pl.when(first_half).then(pl.col(RELEVANCE) * 10 + pl.col(SCORE) / 100)
                         .otherwise(pl.col(SCORE)).alias(SCORE))
    reversed_ = run.with_columns(-pl.col(SCORE))
    return dataset.qrels, {"bm25": run, "teacher": teacher, "good": good, "reversed": reversed_}


@pytest.fixture(scope="module")
def evaluation(runs):
    qrels, by_name = runs
    return evaluate_runs(qrels, by_name, baseline="bm25", teacher="teacher", dataset="tiny/test",
                         first_stage=by_name["bm25"], depths=(3,))


def test_pareto_frontier_by_hand():
    points = {"a": (1.0, 0.3), "b": (2.0, 0.2), "c": (3.0, 0.5), "d": (3.0, 0.4), "e": (10.0, 0.5)}
    assert pareto_frontier(points) == ["a", "c"]
    assert pareto_frontier({}) == []


def test_report_is_self_contained_with_all_figures(evaluation, tmp_path):
    quality = dict(evaluation.summary.select("ranker", "nDCG@10").iter_rows())
    # The premise of the expected frontier below.
    assert quality["reversed"] < quality["bm25"] < quality["good"] < quality["teacher"]
    latency = {"bm25": _latency("bm25", 0.05), "reversed": _latency("reversed", 1.0),
               "good": _latency("good", 3.0), "teacher": _latency("teacher", 50.0),
               "good (no precompute)": _latency("good", 20.0)}
    latency["good (no precompute)"].prepared = False
    importance = {"good": {"bm25": 12.0, "doc_length": 3.5, "title_overlap": 0.0}}
    configs = {"good": {"kind": "lightgbm", "num_leaves": 31}, "bm25": {"kind": "run"}}
    html_path, md_path = write_report(tmp_path, evaluation, latency, configs, importance,
                                      title="tiny <report>")

    page = Page()
    page.feed(html_path.read_text(encoding="utf-8"))
    page.close()
    # 1 quality/latency plot + 3 delta histograms + 2 teacher scatters + 1 importance chart
    assert len(page.images) == 7
    for src in page.images:
        assert src.startswith(DATA_URI)
        png = base64.b64decode(src[len(DATA_URI):], validate=True)
        assert png.startswith(PNG_MAGIC)
        from PIL import Image

        Image.open(io.BytesIO(png)).verify()
    assert page.external == []
    assert page.pareto == ["bm25", "good", "teacher"]

    text = html_path.read_text(encoding="utf-8")
    assert "tiny &lt;report&gt;" in text and "<details>" in text and "num_leaves" in text

    markdown = md_path.read_text(encoding="utf-8")
    header = next(line for line in markdown.splitlines() if line.startswith("| ranker"))
    assert "nDCG@10" in header and "p50 ms" in header
    for ranker in ("bm25", "teacher", "good", "reversed"):
        assert f"| {ranker} " in markdown
    assert "1. bm25\n2. good\n3. teacher" in markdown
    # rerank depth: the first stage's top 3, then the whole top-10 lists
    depth_header = markdown.split("## Rerank depth", 1)[1].split("| ranker", 1)[1].splitlines()[0]
    assert "top-3" in depth_header and "top-10" in depth_header and "Rerank depth" in text


def test_report_without_latency_or_teacher(runs, tmp_path):
    qrels, by_name = runs
    plain = evaluate_runs(qrels, {name: by_name[name] for name in ("bm25", "good")}, baseline="bm25")
    html_path, md_path = write_report(tmp_path, plain)
    page = Page()
    page.feed(html_path.read_text(encoding="utf-8"))
    assert len(page.images) == 1  # the one delta histogram
    assert page.pareto == []
    assert "Pareto" not in md_path.read_text(encoding="utf-8")
    assert "Rerank depth" not in md_path.read_text(encoding="utf-8")  # no first stage given
