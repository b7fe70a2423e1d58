"""``distill export``: a cross-encoder or bi-encoder student as an ONNX Runtime or OpenVINO folder."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.app import tasks
from distill.core.outputs import OVERWRITE_HELP
from students.export import ExportConfig

DEFAULTS = ExportConfig()


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        model: Path = typer.Argument(..., help="Student folder (cross-encoder or bi-encoder, from train-student)."),
        format: str = typer.Option(DEFAULTS.format, "--format", help="onnx (ONNX Runtime) or openvino."),
        quantize: str = typer.Option(None, help="int8: ONNX dynamic int8, or OpenVINO int8 calibrated on "
                                     "(query, document) pairs of the model's training queries [none: no "
                                     "quantization]."),
        out: Path = typer.Option(..., help="Folder to write (replaced only if the fidelity check passes)."),
        openvino_precision: str = typer.Option(DEFAULTS.openvino_precision, help="OpenVINO: f32 or bf16 for "
                                               "what stays in floating point."),
        data: str = typer.Option(None, help="BEIR folder for the check [the model's training data]."),
        split: str = typer.Option(None, help="Its split [the model's]."),
        sample_queries: int = typer.Option(DEFAULTS.sample_queries, min=1, help="Queries the check reranks."),
        candidates: int = typer.Option(DEFAULTS.candidates, min=2, help="BM25 candidates per checked query."),
        check: str = typer.Option(DEFAULTS.check, help="auto (qrels where the sample has them), qrels or "
                                  "agreement (with the fp32 model only)."),
        min_ndcg_ratio: float = typer.Option(DEFAULTS.min_ndcg_ratio, help="Least nDCG@10 as a share of fp32's."),
        min_overlap: float = typer.Option(DEFAULTS.min_overlap, help="Least top-10 overlap with the fp32 model."),
        min_kendall: float = typer.Option(DEFAULTS.min_kendall, help="Least Kendall tau (agreement check)."),
        seed: int = typer.Option(DEFAULTS.seed, help="Seed of the query samples."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Export a student to ONNX/OpenVINO (int8 if asked); refuse if it ranks unlike the fp32 model."""
        from rich import print as rprint

        config = ExportConfig(format=format, quantize=quantize, openvino_precision=openvino_precision, data=data,
                              split=split, sample_queries=sample_queries, candidates=candidates, check=check,
                              min_ndcg_ratio=min_ndcg_ratio, min_overlap=min_overlap, min_kendall=min_kendall,
                              seed=seed)
        fidelity = tasks.run_export(model, out, config, overwrite=overwrite)
        rprint(f"wrote {out}: {fidelity['summary']} ({fidelity['mode']} check on {fidelity['queries']} queries)")
