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
export's ``distill.json``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from distill.core.errors import ConfigError, DistillError, InputError
from distill.core.io import atomic_dir, read_json
from distill.core.manifest import write_manifest
from distill.core.outputs import check_folder
from distill.core.recorded_paths import rebase, resolve_recorded
from distill.core.schema import DOCID, QID, RELEVANCE, SCORE
from distill.data.beir import Dataset, load_beir
from distill.data.views import restrict
from distill.inference.graph import GRAPH_FILES
from students.backends import FORMATS, KIND, load_exported

log = logging.getLogger(__name__)

ROLES = {"cross-encoder-student": "cross-encoder", "teacher": "cross-encoder", "bi-encoder-student": "bi-encoder"}
CALIBRATION_BATCH = 16


class ExportRefused(DistillError):
    """The export ranks too unlike the fp32 model; nothing was written."""


@dataclass
class ExportConfig:
    """How to export, and how close to the fp32 model the export must stay."""

    format: Literal["onnx", "openvino"] = "onnx"
    quantize: Literal["int8"] | None = None
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

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}", field="format")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"--quantize must be int8 (or absent), got {self.quantize!r}", field="quantize")
        if self.check not in ("auto", "qrels", "agreement"):
            raise ConfigError(f"check must be auto, qrels or agreement, got {self.check!r}", field="check")
        if self.sample_queries < 1 or self.candidates < 2:
            raise ConfigError("the fidelity check needs at least 1 query and 2 candidates", field="sample_queries")


def export_model(model: str | Path, out: str | Path, config: ExportConfig | None = None, *,
                 overwrite: bool = False) -> dict[str, Any]:
    """Export the student folder ``model`` to ``out`` (written atomically; replacing only an earlier export,
    unless ``overwrite``) and return its fidelity check; raise :class:`ExportRefused` (writing nothing)
    when the check fails."""
    config = config or ExportConfig()
    model, out = Path(model), Path(out)
    check_folder(out, KIND, overwrite=overwrite, inputs=[model], datasets=[config.data])
    source = _source_manifest(model)
    role = ROLES[source["kind"]]
    dataset = _training_data(model, source, config)
    check_qids, calibration_qids = _sample_queries(dataset, config)
    candidates = _candidates(dataset, check_qids + calibration_qids, config.candidates)
    data = rebase(source["data"], out, model) if isinstance(source.get("data"), dict) else source.get("data")
    with atomic_dir(out, kind=KIND, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix="distill-export-") as scratch:
        spec = _export_graph(model, role, tmp, Path(scratch), config,
                             candidates.filter(pl.col(QID).is_in(calibration_qids)), dataset)
        manifest = {"format": config.format, "quantize": config.quantize, "model": spec,
                    "openvino_precision": config.openvino_precision,
                    "source": {"path": str(model.resolve()), "kind": source["kind"], "data": data}}
        write_manifest(tmp, KIND, asdict(config), **manifest)  # so the export loads for the check
        fidelity = check_fidelity(load_exported(tmp), _reference(model, role), dataset,
                                  candidates.filter(pl.col(QID).is_in(check_qids)), config)
        if not fidelity["passed"]:
            raise ExportRefused(f"the {config.format}{' int8' if config.quantize else ''} export of {model} "
                                f"ranks too unlike the fp32 model ({fidelity['reason']}); nothing was written")
        write_manifest(tmp, KIND, asdict(config), **manifest, fidelity=fidelity)
    log.info("exported %s to %s (%s)", model, out, fidelity["summary"])
    return fidelity


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


def _candidates(dataset: Dataset, qids: list[str], k: int) -> pl.DataFrame:
    from distill.data.bm25 import bm25_run

    return bm25_run(restrict(dataset, qids), k).select(QID, DOCID)


# -- the graph -----------------------------------------------------------------------------


def _export_graph(model: Path, role: str, tmp: Path, scratch: Path, config: ExportConfig,
                  calibration: pl.DataFrame, dataset: Dataset) -> dict[str, Any]:
    """Write the graph and tokenizer into ``tmp``; return how to tokenize and score (``model``)."""
    from distill.inference.graph_export import export_onnx
    from students.backends_graph import load_torch

    torch_model, tokenizer, spec = load_torch(model, role)
    onnx_path = scratch / "model.onnx"
    names = export_onnx(torch_model, tokenizer, role, onnx_path)
    feeds = _calibration_feeds(tokenizer, spec, role, calibration, dataset, names)
    tokenizer.save_pretrained(str(tmp))
    if config.format == "onnx":
        target = tmp / GRAPH_FILES["onnx"]
        if config.quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # 7-bit weights: on CPUs without VNNI (AVX2; AVX-512 before it) 8-bit dot products saturate their
            # 16-bit sums, and the export would rank worse there than where it was checked (docs/cpus.md)
            quantize_dynamic(onnx_path, target, weight_type=QuantType.QInt8, reduce_range=True)
        else:
            onnx_path.replace(target)
        return spec
    import openvino as ov

    graph = ov.convert_model(str(onnx_path))
    if config.quantize:
        import nncf

        # the same 7-bit weights for every layer (NNCF's default fixes the first only; docs/cpus.md)
        fix = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
        graph = nncf.quantize(graph, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds), advanced_parameters=fix)
    ov.save_model(graph, str(tmp / GRAPH_FILES["openvino"]), compress_to_fp16=False)
    return spec


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
    """The fp32 torch model as distill loads it (a cross-encoder pinned to fp32, not auto)."""
    from distill.rankers.loading import load_ranker

    return load_ranker(str(model), name="fp32", **({"dtype": "fp32"} if role == "cross-encoder" else {}))


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
