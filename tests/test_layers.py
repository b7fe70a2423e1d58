"""The package's layers: distill's core never imports teachers/ or students/, loading a
LightGBM-only ranker or cascade does not import torch, and the public API is one name, one thing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "distill"
# The top layer, which may reach teachers/ and students/ (the CLI, the commands' work in distill.tasks,
# the pipeline, servers; the lazy re-exports of distill/__init__.py name modules as strings, not imports).
TOP = {"cli.py", "tasks.py", "pipeline.py"}
CLI = ("distill.cli", "distill.commands")
UPPER_PACKAGES = ("teachers", "students")


def _top_layer(path: Path) -> bool:
    relative = path.relative_to(CORE)
    return relative.parts[0] == "commands" or relative.name in TOP or relative.name.startswith("serve")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import``/``from ... import`` statement names, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_the_core_never_imports_teachers_or_students():
    core = [p for p in sorted(CORE.rglob("*.py")) if not _top_layer(p)]
    assert CORE / "rankers.py" in core and CORE / "cache.py" in core and CORE / "training.py" in core
    upward = [f"{p.relative_to(ROOT)}:{line} imports {module}" for p in core for line, module in _imported_modules(p)
              if module.split(".")[0] in UPPER_PACKAGES]
    assert not upward, "\n".join(upward)


def test_only_the_cli_imports_the_cli():
    """The library owns the work: the pipeline and distill.tasks call functions, never commands."""
    library = [p for root in (CORE, ROOT / "teachers", ROOT / "students") for p in sorted(root.rglob("*.py"))
               if p.name != "cli.py" and "commands" not in p.relative_to(ROOT).parts]
    assert CORE / "pipeline.py" in library and CORE / "tasks.py" in library
    found = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in library for line, name in _imported_names(p)
             if name.startswith(CLI)]
    assert not found, "\n".join(found)


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module imported, and every ``module.name`` a ``from module import name`` names."""
    names = _imported_modules(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def test_teachers_do_not_import_students():
    upward = [f"{p.relative_to(ROOT)}:{line} imports {module}" for p in sorted((ROOT / "teachers").rglob("*.py"))
              for line, module in _imported_modules(p) if module.split(".")[0] == "students"]
    assert not upward, "\n".join(upward)


def test_the_scan_sees_an_upward_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from students.lightgbm import LightGBMRanker\n    import teachers\n")
    assert [m for _, m in _imported_modules(planted)] == ["students.lightgbm", "teachers"]


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def lightgbm_cascade(tmp_path_factory, tiny_beir) -> Path:
    """A LightGBM student trained on BM25's scores and a spec ``bm25 % 10 >> lightgbm``."""
    from distill.bm25 import bm25_run
    from distill.cascade import Cascade, StageCost, stage
    from distill.data import load_beir
    from distill.rankers import load_ranker
    from students.lightgbm import LightGBMConfig, train_lightgbm_student

    folder = tmp_path_factory.mktemp("layers")
    dataset = load_beir(tiny_beir, "test")
    run = bm25_run(dataset, 20)
    model = train_lightgbm_student(dataset, run, run, folder / "lightgbm",
                                   LightGBMConfig(n_estimators=5, valid_fraction=0.0))
    chain = stage("bm25", load_ranker("bm25"), "bm25") % 10 >> stage("lightgbm", load_ranker(str(model)), str(model))
    spec = folder / "cascade.json"
    Cascade(chain.stages, 5.0, {"bm25": StageCost(), "lightgbm": StageCost(0.1, 0.01)}).write_spec(spec)
    return spec


def test_loading_a_lightgbm_ranker_or_cascade_does_not_import_torch(lightgbm_cascade):
    model = json.loads(lightgbm_cascade.read_text())["stages"][1]["ranker"]
    loaded = _python(
        "import sys\n"
        "from distill.rankers import load_ranker\n"
        f"ranker = load_ranker({model!r})\n"
        f"cascade = load_ranker({str(lightgbm_cascade)!r})\n"
        "print(type(ranker).__name__, type(cascade).__name__, 'torch' in sys.modules)\n"
    )
    assert loaded == "LightGBMRanker Cascade False"
    # the check can fail: the training plumbing does bring torch in
    assert _python("import sys, distill.training; print('torch' in sys.modules)") == "True"


def test_import_distill_is_light():
    heavy = "('torch', 'teachers', 'students', 'lightgbm')"
    assert _python("import sys, distill; distill.load_ranker; distill.evaluate; "
                   f"print(sorted(m for m in {heavy} if m in sys.modules))") == "[]"


def test_no_public_name_shadows_a_submodule():
    import distill

    submodules = {p.stem for p in CORE.glob("*.py")} | {p.name for p in CORE.iterdir() if (p / "__init__.py").exists()}
    assert not submodules & set(distill.__all__), "a public name is also a submodule's name"
    for name in distill.__all__:
        assert getattr(distill, name) is not None, name
    import distill.evaluation  # importing the module does not replace the function

    assert callable(distill.evaluate) and distill.evaluate is distill.evaluation.evaluate


def test_ranker_kinds_come_from_the_entry_points():
    from distill.registry import RANKERS, TEACHERS

    assert {"teacher", "cross-encoder-student", "bi-encoder-student", "lightgbm-student", "cascade",
            "cross-encoder", "sentence-transformer"} <= set(RANKERS.kinds())
    assert {"cross-encoder", "generative"} <= set(TEACHERS.kinds())


def test_a_registered_loader_is_used_and_unknown_kinds_name_the_known(tmp_path):
    from distill.errors import InputError
    from distill.rankers import RunRanker, load_ranker
    from distill.registry import RANKERS

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "distill.json").write_text(json.dumps({"kind": "my-ranker"}))
    with pytest.raises(InputError, match="unknown ranker kind 'my-ranker'; known: .*lightgbm-student"):
        load_ranker(str(folder))
    RANKERS.register("my-ranker", lambda path, **kwargs: RunRanker())
    try:
        assert load_ranker(f"mine={folder}").name == "mine"
    finally:
        RANKERS.unregister("my-ranker")
