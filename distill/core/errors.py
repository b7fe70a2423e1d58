"""Errors a user can act on.

Every problem with the user's input (a file, a line, a field, a flag) is raised as a
:class:`DistillError`. The CLI prints it as one line and exits with code 2; ``--debug``
shows the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DistillError(Exception):
    """A problem the user can fix, located as precisely as we know it."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field is not None:
            where = f"{where}: field '{self.field}'" if where else f"field '{self.field}'"
        return f"{where}: {self.message}" if where else self.message


class InputError(DistillError):
    """Malformed or inconsistent input data (files, ids, scores)."""


class ConfigError(DistillError):
    """Options that contradict each other or do not fit the data."""


class CacheMismatchError(DistillError):
    """A teacher cache asked for with another teacher or other candidates."""
