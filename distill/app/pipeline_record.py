"""What ``pipeline.json`` records across reruns: finished steps, the cascade's budget, the teacher
the students learn from and each student's validation (read from the outputs the steps wrote)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.app.pipeline_config import ENSEMBLE, FUSED

if TYPE_CHECKING:
    from distill.cascade.search import CascadeBuild

log = logging.getLogger("distill")


def cascade_budget(build: CascadeBuild) -> dict[str, Any]:
    """The cascade's budget for ``pipeline.json``: a share of the teacher's expected latency per query, or the
    milliseconds given (``budget_ms``: imported scores have no teacher model to time)."""
    share, provenance = build.cascade.provenance["budget_share"], build.cascade.provenance
    shared = {} if share is None else {"share_of": share["stage"], "share": share["share"],
                                       "teacher_expected_ms": round(build.cascade.budget_ms / share["share"], 3)}
    return {"budget_ms": round(build.cascade.budget_ms, 3), **shared, "k": provenance["latency_k"],
            "threads": provenance["threads"]}


def resume_record(path: Path, record: dict) -> dict:
    """``record`` with the steps and the cascade budget of an earlier run's ``pipeline.json``, if any:
    a rerun skips finished steps, and its record must still say what they did."""
    if path.exists():
        earlier = json.loads(path.read_text())
        record["steps"] = earlier.get("steps", {})
        for key in ("budget", "teacher_choice"):
            if key in earlier:
                record[key] = earlier[key]
    return record


def student_cache(out: Path) -> dict:
    """Which teacher the students learn from, by the valid split: where the trained teacher ranks below BM25 and
    the pipeline fused the zero-shot backbone too (``cache_ensemble``), that ensemble; else the teacher fused with
    BM25 (``cache_fused``) when its weights give BM25 a share, else the trained teacher's own cache (the same
    ranking, its raw scale)."""
    fused = _fused_manifest(out / FUSED)
    weights, chosen_on = fused["weights"], fused["chosen_on"]
    if chosen_on["alone"]["teacher"] < chosen_on["alone"]["bm25"] and (out / ENSEMBLE / "manifest.json").is_file():
        ensemble = _fused_manifest(out / ENSEMBLE)
        weights, chosen_on, cache, teacher = ensemble["weights"], ensemble["chosen_on"], ENSEMBLE, "ensemble"
    elif weights.get("teacher", 0.0) >= 1.0:
        cache, teacher = "cache", "trained"
    else:
        cache, teacher = FUSED, "fused"
    log.info("students learn from the %s teacher: validation %s %.4f (alone: %s; weights %s)", teacher,
             chosen_on["metric"], chosen_on["value"],
             ", ".join(f"{name} {value:.4f}" for name, value in chosen_on["alone"].items()), weights)
    return {"cache": str(out / cache), "teacher": teacher, "weights": weights, "validation": chosen_on}


def _fused_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["teacher"]


def student_validation(models: Path) -> dict[str, dict]:
    """What each student's manifest says about its validation (and, with rounds, the round kept)."""
    found = {}
    for name in ("ce_student", "bi_encoder", "lightgbm"):
        path = models / name / "distill.json"
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if "validation" in manifest:
            found[name] = {**manifest["validation"], "kept_round": (manifest.get("rounds") or {}).get("kept"),
                           "chosen_from": manifest.get("chosen_from")}
    return found
