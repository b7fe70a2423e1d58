"""Loaders by kind, filled by the packages that implement them.

distill's core knows model kinds only by name: a ranker folder's ``distill.json`` says
``"kind": "lightgbm-student"``, a teacher cache's fingerprint says ``"kind": "cross-encoder"``,
and the loader for that kind is looked up here. The ``teachers`` and ``students`` packages
(and any third party) declare their loaders as Python entry points in their
``pyproject.toml``::

    [project.entry-points."distill.rankers"]
    lightgbm-student = "students.lightgbm:LightGBMRanker"

so the core never imports them, and loading a kind imports only the module that implements
it (a LightGBM ranker does not pull in torch). :meth:`Registry.register` adds or replaces
a loader in code (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from distill.core.errors import ConfigError, InputError

Loader = Callable[..., Any]


class Registry:
    """Loaders by kind for one entry-point ``group``; entry points are imported on first use."""

    def __init__(self, group: str, what: str) -> None:
        self.group = group
        self.what = what
        self._loaders: dict[str, Loader] = {}
        self._entry_points: dict[str, EntryPoint] | None = None

    def _declared(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def register(self, kind: str, loader: Loader | None = None) -> Any:
        """Make ``loader`` load ``kind`` (replacing any other); without ``loader``, a decorator."""
        if loader is None:
            return lambda fn: self.register(kind, fn)
        self._loaders[kind] = loader
        return loader

    def unregister(self, kind: str) -> None:
        """Forget a loader registered in code (entry points stay declared)."""
        self._loaders.pop(kind, None)

    def kinds(self) -> list[str]:
        """Every kind a loader is known for, sorted."""
        return sorted({*self._loaders, *self._declared()})

    def __contains__(self, kind: object) -> bool:
        return kind in self._loaders or kind in self._declared()

    def get(self, kind: str, *, path: str | Path | None = None, field: str = "kind") -> Loader:
        """The loader of ``kind``; an unknown kind is an error naming the known ones (an
        :class:`InputError` about ``path`` when given, else a :class:`ConfigError`)."""
        if kind not in self._loaders:
            entry = self._declared().get(kind)
            if entry is None:
                known = ", ".join(self.kinds()) or "none: is distill installed (pip install -e .)?"
                message = f"unknown {self.what} kind {kind!r}; known: {known}"
                raise InputError(message, path=path, field=field) if path is not None else \
                    ConfigError(message, field=field)
            self._loaders[kind] = entry.load()
        return self._loaders[kind]

    def load(self, kind: str, *args: Any, path: str | Path | None = None, **kwargs: Any) -> Any:
        """``get(kind)(*args, **kwargs)``."""
        return self.get(kind, path=path)(*args, **kwargs)


#: Ranker loaders by model kind: ``loader(folder_or_file, **kwargs) -> BaseRanker``. Kinds are a
#: model folder's ``distill.json`` ``kind``, plus ``cross-encoder`` and ``sentence-transformer``
#: for plain Hugging Face / sentence-transformers folders, ``cascade`` for cascade specs and
#: ``teacher-cache`` for teacher cache folders.
RANKERS = Registry("distill.rankers", "ranker")

#: Teacher loaders by teacher kind (a cache fingerprint's ``kind``):
#: ``loader(model_name_or_path, **kwargs) -> BaseRanker`` with a ``score`` method.
TEACHERS = Registry("distill.teachers", "teacher")

#: Student types by student kind (``distill train-student --student KIND``): a
#: :class:`students.student.Student` subclass, built with ``from_options`` and trained with ``train``.
STUDENTS = Registry("distill.students", "student")
