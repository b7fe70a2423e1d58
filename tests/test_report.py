"""The HTML report is one self-contained page: it parses, every image is an embedded PNG,
the expected figures are there, and the Pareto frontier is listed; the Markdown has the table."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import polars as pl
import pytest

from distill.core.schema import DOCID, QID, RELEVANCE, SCORE
from distill.data.beir import load_beir
from distill.data.bm25 import bm25_run
from distill.evaluation.latency import LatencyResult
from distill.evaluation.report import pareto_frontier, write_report
from distill.evaluation.runner import evaluate_runs

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


def test_cells_are_formatted_for_reading():
    from distill.evaluation.report import display_frame, format_p

    assert format_p(3.784e-18) == "< 0.001" and format_p(0.0123) == "0.012"
    frame = pl.DataFrame({"ranker": ["bm25", "ce"], "wins": [None, 12], "nDCG@10": [0.53612, 0.7],
                          "p (t-test, adj.)": [None, 3.784e-18], "parameters": [None, 22_713_601]})
    assert display_frame(frame).rows() == [("bm25", "–", "0.536", "–", "–"),
                                           ("ce", "12", "0.700", "< 0.001", "22,713,601")]


def test_markdown_has_no_null(evaluation, tmp_path):
    _, md_path = write_report(tmp_path, evaluation, {"good": _latency("good", 3.0)})
    markdown = md_path.read_text(encoding="utf-8")
    assert "null" not in markdown and "NaN" not in markdown.replace("nDCG", "")


def _page_width(html_path, tmp_path, window: int = 1400) -> tuple[int, int]:
    """``(document scroll width, window width)`` of the page rendered by headless Chromium."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("CI must install chromium (apt-get install chromium) for the layout test")
        pytest.skip("no chromium on this machine")
    probe = tmp_path / "probe.html"
    script = ('<script>document.body.setAttribute("data-width", '
              'document.documentElement.scrollWidth + "x" + window.innerWidth);</script>')
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={window},900", "--dump-dom"]
    dom = subprocess.run([browser, *flags, probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    match = re.search(r'data-width="(\d+)x(\d+)"', dom)
    assert match, dom[-2000:]
    return int(match.group(1)), int(match.group(2))


def test_report_fits_a_1400px_window(runs, tmp_path):
    """A wide comparison (many rankers, long cascade names, every column) scrolls inside its
    table box; the page itself never scrolls sideways."""
    qrels, by_name = runs
    wide = dict(by_name)
    for i in range(6):
        wide[f"bm25 % 100 >> lightgbm_variant_{i} % 30 >> ce_student % 10 >> teacher"] = by_name["good"]
    evaluation = evaluate_runs(qrels, wide, baseline="bm25", teacher="teacher", dataset="tiny/test",
                               first_stage=by_name["bm25"], depths=(3, 5))
    latency = {name: _latency(name, 1.0 + i) for i, name in enumerate(wide)}
    html_path, _ = write_report(tmp_path, evaluation, latency, title="wide report")
    scroll, window = _page_width(html_path, tmp_path)
    assert window == 1400
    assert scroll <= window, f"the page is {scroll} px wide in a {window} px window"
