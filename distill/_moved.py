"""Old module paths, kept importable for at least one release after the layers became folders.

Until 0.1 every module of distill sat in one flat folder (``distill/cache_files.py``,
``distill/serve_http.py``, ...) and a few shared ones in ``teachers/`` and ``students/``; they now
live in layer folders (docs/architecture.md). Importing an old path gives the moved module itself,
not a copy (so ``monkeypatch``-ing either name changes both): :class:`_Aliases` is a meta path
finder that answers the old names from :data:`MOVED`. Where the old module's name is now a
package (``distill.cache``, ``distill.cascade``, ``distill.serve``, ...), the package re-exports
its old names instead (:func:`distill.core.lazy.reexport`). ``importlib``'s module aliasing has no public helper for
this, hence the finder; it is installed by ``import distill`` (and by ``teachers``/``students``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

# old module path -> where it lives now
MOVED = {
    "distill.errors": "distill.core.errors",
    "distill.io": "distill.core.io",
    "distill.outputs": "distill.core.outputs",
    "distill.schema": "distill.core.schema",
    "distill.manifest": "distill.core.manifest",
    "distill.registry": "distill.core.registry",
    "distill.recorded_paths": "distill.core.recorded_paths",
    "distill.hardware": "distill.core.hardware",
    "distill.runs": "distill.data.runs",
    "distill.pairs": "distill.data.pairs",
    "distill.bm25": "distill.data.bm25",
    "distill.synthetic": "distill.data.synthetic",
    "distill.querysets": "distill.data.querysets",
    "distill.inputs": "distill.data.inputs",
    "teachers.graph": "distill.inference.graph",
    "teachers.graph_export": "distill.inference.graph_export",
    "teachers.batching": "distill.inference.batching",
    "teachers.device": "distill.inference.device",
    "teachers.passages": "distill.inference.passages",
    "distill.lengths": "distill.inference.lengths",
    "distill.groups": "distill.training.groups",
    "distill.objectives": "distill.training.objectives",
    "distill.safe_checkpoints": "distill.training.checkpoints",
    "distill.train_precision": "distill.training.precision",
    "students.losses": "distill.training.losses",
    "students.losses.approximate": "distill.training.losses.approximate",
    "students.losses.base": "distill.training.losses.base",
    "students.losses.in_batch": "distill.training.losses.in_batch",
    "students.losses.listwise": "distill.training.losses.listwise",
    "students.losses.pairwise": "distill.training.losses.pairwise",
    "students.losses.pointwise": "distill.training.losses.pointwise",
    "students.losses.describe": "distill.training.losses.describe",
    "distill.ranking": "distill.rankers.base",
    "distill.cache_files": "distill.cache.files",
    "distill.cache_lock": "distill.cache.lock",
    "distill.cache_merge": "distill.cache.merge",
    "distill.cache_texts": "distill.cache.texts",
    "distill.cache_verify": "distill.cache.verify",
    "distill.scoring": "distill.cache.scoring",
    "distill.score_scale": "distill.cache.score_scale",
    "distill.metrics": "distill.evaluation.metrics",
    "distill.depth": "distill.evaluation.depth",
    "distill.latency": "distill.evaluation.latency",
    "distill.report": "distill.evaluation.report",
    "distill.agreement": "distill.evaluation.agreement",
    "distill.cascade_spec": "distill.cascade.spec",
    "distill.cascade_search": "distill.cascade.search",
    "distill.runtime": "distill.cascade.runtime",
    "distill.serve_admission": "distill.serve.admission",
    "distill.serve_auth": "distill.serve.auth",
    "distill.serve_http": "distill.serve.edge",
    "distill.serve_json": "distill.serve.stepwise_json",
    "distill.serve_request": "distill.serve.request",
    "distill.features": "students.features",
    "distill.tasks": "distill.app.tasks",
    "distill.pipeline": "distill.app.pipeline",
    "distill.pipeline_record": "distill.app.pipeline_record",
    "distill.step_clock": "distill.app.step_clock",
    "distill.summaries": "distill.app.summaries",
    "distill.commands": "distill.app.commands",
    "distill.commands.cascade": "distill.app.commands.cascade",
    "distill.commands.data": "distill.app.commands.data",
    "distill.commands.demo": "distill.app.commands.demo",
    "distill.commands.evaluate": "distill.app.commands.evaluate",
    "distill.commands.export": "distill.app.commands.export",
    "distill.commands.fusion": "distill.app.commands.fusion",
    "distill.commands.queries": "distill.app.commands.queries",
    "distill.commands.serve": "distill.app.commands.serve",
    "distill.commands.teacher": "distill.app.commands.teacher",
    "distill.commands.train": "distill.app.commands.train",
}


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module it moved to."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: Any) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The moved module ran when it was imported."""


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: an old name's submodules (``students.losses.base``)
    would otherwise be found again on the moved package's path and loaded a second time under the old name."""
    if not any(isinstance(finder, _Aliases) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Aliases())
