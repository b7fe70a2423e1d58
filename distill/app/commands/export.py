"""``distill export``: a cross-encoder or bi-encoder student as an ONNX Runtime or OpenVINO folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from distill.app import tasks
from distill.app.commands import MAX_THREADS
from distill.core.outputs import OVERWRITE_HELP
from students.export import ExportConfig

DEFAULTS = ExportConfig()


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        model: Path = typer.Argument(..., help="Student folder (cross-encoder or bi-encoder, from train-student)."),
        format: str = typer.Option(DEFAULTS.format, "--format", help="onnx (ONNX Runtime) or openvino [onnx; with "
                                   "--quantize auto: both]."),
        quantize: str = typer.Option(DEFAULTS.quantize, help="int8: ONNX dynamic int8, or OpenVINO int8 calibrated "
                                     "on (query, document) pairs of the model's training queries; auto: build fp32 "
                                     "and int8 (of --format, else of both runtimes), keep the fastest on this "
                                     "machine that passes the check [none: no quantization]."),
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
        latency_queries: int = typer.Option(DEFAULTS.latency_queries, min=1, help="Checked queries timed per "
                                            "variant and for torch (BM25 top 100 each, as evaluate --latency)."),
        threads: int = typer.Option(DEFAULTS.latency_threads, min=1, max=MAX_THREADS,
                                    help="Threads while timing (torch's and the runtimes')."),
        seed: int = typer.Option(DEFAULTS.seed, help="Seed of the query samples."),
        overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ) -> None:
        """Export a student to ONNX/OpenVINO (int8 if asked, the fastest if auto); refuse if it ranks unlike the
        fp32 model; say how fast it ranks against torch on this machine."""
        config = ExportConfig(format=format, quantize=quantize, openvino_precision=openvino_precision, data=data,
                              split=split, sample_queries=sample_queries, candidates=candidates, check=check,
                              min_ndcg_ratio=min_ndcg_ratio, min_overlap=min_overlap, min_kendall=min_kendall,
                              seed=seed, latency_queries=latency_queries, latency_threads=threads)
        print_export(tasks.run_export(model, out, config, overwrite=overwrite), out)


def print_export(fidelity: dict[str, Any], out: Path) -> None:
    """Each built variant's speed against the torch model as evaluate runs it (fp32, or bf16 where auto keeps
    it) and its check (the kept one marked), then what was kept."""
    from rich.console import Console
    from rich.table import Table

    from students.export_variants import baseline_name

    console, selection, speed = Console(), fidelity["selection"], fidelity["speed"]
    table = Table("", "variant", "ms / query", "vs torch", "check", "passed",
                  title=f"p50 over {speed['queries']} queries x {speed['candidates']} candidates, "
                        f"{speed['threads']} thread(s), this machine")
    table.add_row("", baseline_name(selection["torch_compute"]), f"{selection['torch_ms_per_query']:.1f}", "1.00x",
                  "", "")
    for row in selection["candidates"]:
        table.add_row("→" if row["variant"] == selection["kept"] else "", row["variant"],
                      f"{row['ms_per_query']:.1f}", f"{row['speedup']:.2f}x",
                      row["summary"] if row["passed"] else row["reason"], "yes" if row["passed"] else "no")
    console.print(table)
    console.print(f"wrote {out}: [bold]{selection['kept']}[/], {selection['why']} ({fidelity['mode']} check on "
                  f"{fidelity['queries']} queries)", highlight=False)
