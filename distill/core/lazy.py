"""Names a package exports but imports only on first use (module ``__getattr__``, PEP 562).

``import distill`` (or ``teachers``, ``students``, ``distill.cache``, ...) stays light: no torch,
no model library, until a name that needs one is used. :func:`lazy_names` serves a table of
public names, :func:`reexport` every name of one module (a package that was that module).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exporting ``exports`` (public name -> the module that
    defines it); a name is imported on first use and kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*sys.modules[package].__dict__, *exports})

    return __getattr__, __dir__


def reexport(package: str, module: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package that was a module: its old names, imported from
    ``module`` on first use (so importing one of the package's submodules stays light)."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(importlib.import_module(module), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        return sorted({*sys.modules[package].__dict__, *dir(importlib.import_module(module))})

    return __getattr__, __dir__
