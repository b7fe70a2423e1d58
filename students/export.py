"""Export a cross-encoder or bi-encoder student to ONNX Runtime or OpenVINO, int8 if asked,
and keep the export only if it ranks like the model it came from.

The graph is exported with ``torch.onnx.export`` (the dynamo exporter, which needs
onnxscript); ``--quantize int8`` then means

- ONNX: ONNX Runtime's dynamic quantization (int8 weights, activation scales computed per
  batch at run time, so no calibration set; static QDQ scales of BERT activations, whose
  outliers a fixed scale clips, lose more);
- OpenVINO: NNCF's post-training quantization with its transformer preset (SmoothQuant,
  bias correction), calibrated on (query, document) pairs of the model's own training
  queries, the inputs it will see, not single sentences.

Before the folder is written, the export and the fp32 torch model rerank the BM25
candidates of a seeded sample of the model's training queries (``distill.json`` records the
dataset and split). With qrels the export must keep ``min_ndcg_ratio`` of the fp32 model's
nDCG@10 and a top-10 overlap of ``min_overlap`` with it; without (a query log) it must agree
with it: top-10 overlap ``min_overlap`` and Kendall's tau ``min_kendall``. Otherwise
:class:`ExportRefused` is raised and nothing is written. The result is recorded in the
export's ``distill.json``, with how fast the export and the model as ``distill evaluate`` runs it
by default (torch, in the precision ``auto`` settles on here) rank one query's 100 candidates on 1
thread on this machine (:mod:`students.export_variants`, as ``distill evaluate --latency`` times
them). ``--quantize auto`` builds OpenVINO fp32 and int8 and ONNX Runtime fp32 and
int8 (only ``--format``'s two when it is given), and keeps the fastest that passes the check.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, InputError
from distill.core.io import atomic_dir, read_json
from distill.core.manifest import write_manifest
from distill.core.outputs import check_folder
from distill.core.progress import third_party_progress_shown
from distill.core.recorded_paths import rebase, resolve_recorded
from distill.core.schema import DOCID, QID, RELEVANCE, SCORE
from distill.data.beir import Dataset, load_beir
from distill.data.views import restrict
from distill.evaluation.runner import EvaluateConfig
from distill.inference.graph import GRAPH_FILES
from students import export_variants as variants
from students.backends import FORMATS, KIND, load_exported
from students.export_variants import ExportRefused

log = logging.getLogger(__name__)

ROLES = {"cross-encoder-student": "cross-encoder", "teacher": "cross-encoder", "bi-encoder-student": "bi-encoder"}
CALIBRATION_BATCH = 16

__all__ = ["ExportConfig", "ExportRefused", "check_fidelity", "export_model"]


@dataclass
class ExportConfig:
    """How to export, and how close to the fp32 model the export must stay.

    ``format`` None: ONNX, or with ``quantize="auto"`` both runtimes. ``quantize="auto"``: build the
    format's fp32 and int8 variants and keep the fastest that passes the check
    (:mod:`students.export_variants`). Every export is timed like ``distill evaluate --latency``
    (``latency_candidates`` per query, ``latency_threads`` threads, ``latency_queries`` queries).
    """

    format: Literal["onnx", "openvino"] | None = None
    quantize: Literal["int8", "auto"] | None = None
    # OpenVINO's precision for what stays in floating point ("bf16" uses AVX-512-BF16/AMX
    # where the CPU has it; OpenVINO falls back to f32 where it does not)
    openvino_precision: Literal["f32", "bf16"] = "f32"
    sample_queries: int = 50  # training queries the fidelity check reranks
    calibration_queries: int = 16  # other training queries OpenVINO int8 calibrates on
    candidates: int = 30  # BM25 candidates per query
    min_ndcg_ratio: float = 0.99
    min_overlap: float = 0.9
    min_kendall: float = 0.9
    check: Literal["auto", "qrels", "agreement"] = "auto"  # auto: qrels where the sample has judgements
    data: str | None = None  # default: the dataset recorded in the model's distill.json
    split: str | None = None
    seed: int = 0
    latency_queries: int = 10  # of the check's queries, timed (after 3 untimed) per variant and for torch
    latency_candidates: int = EvaluateConfig.k
    latency_threads: int = EvaluateConfig.threads

    def __post_init__(self) -> None:
        if self.format not in (None, *FORMATS):
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}", field="format")
        if self.quantize not in (None, "int8", "auto"):
            raise ConfigError(f"--quantize must be int8 or auto (or absent), got {self.quantize!r}",
                              field="quantize")
        if self.check not in ("auto", "qrels", "agreement"):
            raise ConfigError(f"check must be auto, qrels or agreement, got {self.check!r}", field="check")
        if self.sample_queries < 1 or self.candidates < 2:
            raise ConfigError("the fidelity check needs at least 1 query and 2 candidates", field="sample_queries")
        for name in ("latency_queries", "latency_candidates", "latency_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", field=name)


def export_model(model: str | Path, out: str | Path, config: ExportConfig | None = None, *,
                 overwrite: bool = False) -> dict[str, Any]:
    """Export the student folder ``model`` to ``out`` (written atomically; replacing only an earlier export,
    unless ``overwrite``) and return its fidelity check, with its speed (``speed``) and every built
    variant's speed and check (``selection``); raise :class:`ExportRefused` (writing nothing) when no
    variant passes the check."""
    config = config or ExportConfig()
    model, out = Path(model), Path(out)
    check_folder(out, KIND, overwrite=overwrite, inputs=[model], datasets=[config.data])
    source = _source_manifest(model)
    role = ROLES[source["kind"]]
    if source.get("passages"):  # the graphs score a pair's first max_length tokens only
        raise ConfigError(f"{model}/distill.json: the student scores long documents by passages "
                          f"({source['passages'].get('mode')}P), which an exported graph cannot yet: serve the "
                          "torch model, or train the student from a cache scored without --passages",
                          field="passages")
    dataset = _training_data(model, source, config)
    check_qids, calibration_qids = _sample_queries(dataset, config)
    candidates = _candidates(dataset, check_qids + calibration_qids, config.candidates)
    timed = _candidates(dataset, check_qids[:config.latency_queries], config.latency_candidates, scores=True)
    data = rebase(source["data"], out, model) if isinstance(source.get("data"), dict) else source.get("data")
    origin = {"path": str(model.resolve()), "kind": source["kind"], "data": data}
    with atomic_dir(out, kind=KIND, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix="distill-export-") as scratch:
        reference = _reference(model, role)
        checked = candidates.filter(pl.col(QID).is_in(check_qids))
        baseline = _baseline(model, dataset, checked) if role == "cross-encoder" else reference
        torch_ms, compute = _speed(baseline, dataset, timed, config), getattr(baseline, "compute", "fp32")
        graph = _OnnxGraph(model, role, Path(scratch), candidates.filter(pl.col(QID).is_in(calibration_qids)),
                           dataset)
        built = {}
        for name in variants.candidate_variants(config.format, config.quantize):
            fmt, quantize = variants.VARIANTS[name]
            built[name] = _build_variant(graph, Path(scratch) / name, replace(config, format=fmt, quantize=quantize),
                                         origin, reference, dataset, checked, timed, torch_ms)
        rows = [row for _, row in built.values()]
        kept, why = variants.choose_variant(rows, torch_ms, auto=config.quantize == "auto",
                                            baseline=variants.baseline_name(compute))
        if kept is None:
            asked = "any variant" if config.quantize == "auto" else f"the {rows[0]['variant']} export"
            raise ExportRefused(f"{asked} of {model} ranks too unlike the fp32 model ({why}); nothing was written")
        fidelity, row = built[kept]
        fidelity = {**fidelity, "speed": _speed_record(row, torch_ms, compute, config),
                    "selection": {"asked": {"format": config.format, "quantize": config.quantize},
                                  "torch_ms_per_query": torch_ms, "torch_compute": compute, "candidates": rows,
                                  "kept": kept, "why": why}}
        for path in (Path(scratch) / kept).iterdir():
            shutil.move(str(path), str(tmp / path.name))
        final = replace(config, format=row["format"], quantize=row["quantize"])
        write_manifest(tmp, KIND, asdict(final), **_manifest(final, graph.spec, origin), fidelity=fidelity)
    log.info("exported %s to %s as %s (%s)", model, out, kept, fidelity["summary"])
    return fidelity


def _manifest(config: ExportConfig, spec: dict[str, Any], origin: dict[str, Any]) -> dict[str, Any]:
    """What an export's ``distill.json`` says besides its settings and check: how to load and score it."""
    return {"format": config.format, "quantize": config.quantize, "model": spec,
            "openvino_precision": config.openvino_precision, "source": origin}


def _build_variant(graph: _OnnxGraph, folder: Path, config: ExportConfig, origin: dict[str, Any], reference: Any,
                   dataset: Dataset, checked: pl.DataFrame, timed: pl.DataFrame,
                   torch_ms: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write one variant into ``folder``, check it against ``reference`` and time it: its fidelity check
    and its row of the selection (:func:`students.export_variants.candidate_row`)."""
    folder.mkdir()
    graph.write(folder, config)
    write_manifest(folder, KIND, asdict(config), **_manifest(config, graph.spec, origin))  # so the export loads
    exported = load_exported(folder)
    fidelity = check_fidelity(exported, reference, dataset, checked, config)
    name = variants.variant_name(config.format, config.quantize)
    row = variants.candidate_row(name, fidelity, _speed(exported, dataset, timed, config), torch_ms)
    log.info("%s: %s, %.1f ms/query (torch %.1f)", name, fidelity["summary"], row["ms_per_query"], torch_ms)
    return fidelity, row


def _speed(ranker: Any, dataset: Dataset, timed: pl.DataFrame, config: ExportConfig) -> float:
    return variants.measure_speed(ranker, dataset, timed, candidates=config.latency_candidates,
                         queries=config.latency_queries, threads=config.latency_threads, seed=config.seed)


def _speed_record(row: dict[str, Any], torch_ms: float, compute: str, config: ExportConfig) -> dict[str, Any]:
    """The kept export's speed against the torch model's (computing in ``compute``), and how both were
    measured."""
    return {"ms_per_query": row["ms_per_query"], "torch_ms_per_query": torch_ms, "torch_compute": compute,
            "speedup": row["speedup"], "candidates": config.latency_candidates, "threads": config.latency_threads,
            "queries": config.latency_queries, "statistic": "p50"}


def _source_manifest(model: Path) -> dict[str, Any]:
    path = model / "distill.json"
    if not path.is_file():
        raise InputError("not a distill model folder (no distill.json)", path=model)
    body = read_json(path)
    if body.get("kind") not in ROLES:
        raise InputError(f"cannot export a model of kind {body.get('kind')!r}; exportable: {', '.join(ROLES)}",
                         path=path, field="kind")
    return body


def _training_data(model: Path, source: dict[str, Any], config: ExportConfig) -> Dataset:
    """The dataset the model was trained on (or ``config.data``/``split``), for the check: for a model
    trained on a split plus unjudged queries, that split's judged queries."""
    data = source.get("data") or {}
    if not (config.data or data.get("path")):
        raise ConfigError("the model's distill.json records no training data; pass --data (and --split)",
                          path=model / "distill.json", field="data.path")
    path = config.data or resolve_recorded(data, model)
    if path is None:
        raise InputError(f"the model's training data {data['path']} is not found (from here, nor from the model "
                         "folder); pass --data (and --split)", path=model / "distill.json", field="data.path")
    split = config.split or data.get("split")
    if split and "+" in split:  # "train+pseudo_queries": the judged split, plus a queries file not recorded
        split = split.split("+", 1)[0]
    elif split and split.startswith("queries:"):
        raise ConfigError(f"the model was trained on a queries file only ({split}); pass --data and --split with "
                          "judged queries for the check", path=model / "distill.json", field="data.split")
    return load_beir(path, split)


def _sample_queries(dataset: Dataset, config: ExportConfig) -> tuple[list[str], list[str]]:
    """Disjoint seeded samples of the dataset's queries: the check's, then calibration's."""
    rng = np.random.default_rng(config.seed)
    qids = dataset.queries[QID].to_list()
    order = [qids[i] for i in rng.permutation(len(qids))]
    n_check = min(config.sample_queries, len(order))
    calibration = order[n_check:n_check + config.calibration_queries] or order[:config.calibration_queries]
    return order[:n_check], calibration


def _candidates(dataset: Dataset, qids: list[str], k: int, scores: bool = False) -> pl.DataFrame:
    """BM25's top ``k`` of the queries ``qids`` (with its scores, which the latency measurement orders by)."""
    from distill.data.bm25 import bm25_run

    run = bm25_run(restrict(dataset, qids), k)
    return run if scores else run.select(QID, DOCID)


# -- the graph -----------------------------------------------------------------------------


class _OnnxGraph:
    """The student's fp32 ONNX graph, exported once, and its calibration batches: every variant is made
    from it (:meth:`write`)."""

    def __init__(self, model: Path, role: str, scratch: Path, calibration: pl.DataFrame, dataset: Dataset) -> None:
        from distill.inference.graph_export import export_onnx
        from students.backends_graph import load_torch

        torch_model, self.tokenizer, self.spec = load_torch(model, role)
        self.path = scratch / "model.onnx"
        names = export_onnx(torch_model, self.tokenizer, role, self.path)
        self.feeds = _calibration_feeds(self.tokenizer, self.spec, role, calibration, dataset, names)

    def write(self, folder: Path, config: ExportConfig) -> None:
        """Write the tokenizer and the graph of ``config``'s format and quantization into ``folder``."""
        self.tokenizer.save_pretrained(str(folder))
        if config.format == "onnx":
            target = folder / GRAPH_FILES["onnx"]
            if config.quantize:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # 7-bit weights: on CPUs without VNNI (AVX2; AVX-512 before it) 8-bit dot products saturate their
                # 16-bit sums, and the export would rank worse there than where it was checked (docs/cpus.md)
                quantize_dynamic(self.path, target, weight_type=QuantType.QInt8, reduce_range=True)
            else:
                shutil.copyfile(self.path, target)
            return
        import openvino as ov

        graph = ov.convert_model(str(self.path))
        if config.quantize:
            import nncf

            # the same 7-bit weights for every layer (NNCF's default fixes the first only; docs/cpus.md)
            fix = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
            with _nncf_bars(third_party_progress_shown()):
                graph = nncf.quantize(graph, nncf.Dataset(self.feeds), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(self.feeds), advanced_parameters=fix)
        ov.save_model(graph, str(folder / GRAPH_FILES["openvino"]), compress_to_fp16=False)


@contextmanager
def _nncf_bars(shown: bool) -> Iterator[None]:
    """NNCF's progress bars only where third-party bars are shown (distill's CLI: with ``--verbose``).

    NNCF has no switch for them: its ``track`` draws on rich's global console, which is muted meanwhile
    (distill's own messages go to a console of their own)."""
    from rich import get_console

    console = get_console()
    muted, console.quiet = console.quiet, console.quiet or not shown
    try:
        yield
    finally:
        console.quiet = muted


def _calibration_feeds(tokenizer: Any, spec: dict[str, Any], role: str, pairs: pl.DataFrame, dataset: Dataset,
                       names: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """Padded int64 batches of the calibration queries' (query, candidate) pairs (for a
    bi-encoder: the queries and the candidates as separate texts)."""
    queries, docs = dataset.query_texts(pairs[QID]), dataset.doc_texts(pairs[DOCID])
    if spec["lowercase"]:
        queries, docs = [q.lower() for q in queries], [d.lower() for d in docs]
    if role == "cross-encoder":
        batches = [(queries[i:i + CALIBRATION_BATCH], docs[i:i + CALIBRATION_BATCH])
                   for i in range(0, len(queries), CALIBRATION_BATCH)]
    else:
        texts = list(dict.fromkeys(queries)) + list(dict.fromkeys(docs))
        batches = [(texts[i:i + CALIBRATION_BATCH],) for i in range(0, len(texts), CALIBRATION_BATCH)]
    feeds = []
    for batch in batches:
        encoded = tokenizer(*batch, padding=True, truncation=True, max_length=spec["max_length"], return_tensors="np")
        feeds.append({n: encoded[n].astype(np.int64) for n in names})
    return feeds


def _reference(model: Path, role: str):
    """The fp32 torch model as distill loads it (a cross-encoder pinned to fp32, not auto): what every
    export's scores are checked against."""
    from distill.rankers.loading import load_ranker

    return load_ranker(str(model), name="fp32", **({"dtype": "fp32"} if role == "cross-encoder" else {}))


def _baseline(model: Path, dataset: Dataset, checked: pl.DataFrame):
    """The cross-encoder as ``distill evaluate`` runs it by default, which every export is timed against: with
    ``dtype="auto"``, settled on the check's pairs as evaluate settles it on its run
    (bf16 where this CPU computes it natively and it ranks like fp32; else fp32). Timing exports against
    fp32 alone would call an export faster than a model that, as distill runs it, is faster still."""
    from distill.rankers.loading import load_ranker

    ranker = load_ranker(str(model), name="torch")
    if getattr(ranker, "precision_pending", False):
        ranker.settle_precision(dataset.query_texts(checked[QID]), dataset.doc_texts(checked[DOCID]))
    return ranker


# -- the fidelity check --------------------------------------------------------------------


def check_fidelity(exported: Any, reference: Any, dataset: Dataset, candidates: pl.DataFrame,
                   config: ExportConfig) -> dict[str, Any]:
    """Rerank ``candidates`` with both rankers and compare them (see the module docstring).

    Returns the measurements, the thresholds, ``mode`` (``qrels`` or ``agreement``),
    ``passed``, a one-line ``summary`` and, when it failed, the ``reason``.
    """
    from distill.evaluation.agreement import teacher_agreement
    from distill.evaluation.metrics import metric_means

    qrels = dataset.qrels.filter(pl.col(QID).is_in(candidates[QID].unique().to_list()) & (pl.col(RELEVANCE) > 0))
    mode = config.check if config.check != "auto" else ("qrels" if qrels.height else "agreement")
    if mode == "qrels" and not qrels.height:
        raise ConfigError("the fidelity sample has no qrels; use the agreement check", field="check")
    exported_run, reference_run = exported.rerank(dataset, candidates), reference.rerank(dataset, candidates)
    sample = {"mode": mode, "queries": candidates[QID].n_unique(), "pairs": candidates.height}
    non_finite = exported_run.height - exported_run.filter(pl.col(SCORE).is_finite()).height
    if non_finite:  # an overflowing graph: no order left to compare
        reason = f"{non_finite} of {exported_run.height} scores are NaN or infinite"
        return {**sample, "passed": False, "reason": reason, "summary": reason}
    agreement = teacher_agreement(exported_run, reference_run, k=10).means
    result: dict[str, Any] = {
        **sample,
        "overlap@10": agreement["overlap@10"], "kendall_tau": agreement["kendall_tau"],
        "spearman_pooled": agreement["spearman_pooled"],
        "thresholds": {"min_overlap": config.min_overlap},
    }
    failures = []
    if result["overlap@10"] < config.min_overlap:
        failures.append(f"top-10 overlap {result['overlap@10']:.3f} < {config.min_overlap}")
    if mode == "qrels":
        fp32 = metric_means(qrels, reference_run, ("nDCG@10",))["nDCG@10"]
        export = metric_means(qrels, exported_run, ("nDCG@10",))["nDCG@10"]
        ratio = export / fp32 if fp32 > 0 else (1.0 if export >= fp32 else 0.0)
        result.update({"ndcg@10": export, "ndcg@10_fp32": fp32, "ndcg@10_ratio": ratio})
        result["thresholds"]["min_ndcg_ratio"] = config.min_ndcg_ratio
        if ratio < config.min_ndcg_ratio:
            failures.append(f"nDCG@10 {export:.4f} is {ratio:.2%} of fp32's {fp32:.4f} < {config.min_ndcg_ratio:.0%}")
        result["summary"] = f"nDCG@10 {ratio:.2%} of fp32, top-10 overlap {result['overlap@10']:.3f}"
    else:
        result["thresholds"]["min_kendall"] = config.min_kendall
        tau = result["kendall_tau"]
        if math.isnan(tau) or tau < config.min_kendall:
            failures.append(f"Kendall tau {tau:.3f} < {config.min_kendall}")
        result["summary"] = f"top-10 overlap {result['overlap@10']:.3f}, Kendall tau {tau:.3f}"
    result["passed"] = not failures
    if failures:
        result["reason"] = "; ".join(failures)
    return result
