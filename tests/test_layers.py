"""The package's layers: each folder imports only the folders below it (docs/architecture.md),
no code uses a module's old flat path, loading a LightGBM-only ranker or cascade does not
import torch, and the public API is one name, one thing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "distill"
# bottom to top: a module may import its own folder's modules and those of the folders before it
LAYERS = ("core", "data", "inference", "training", "rankers", "cache", "evaluation", "cascade", "serve",
          "teachers", "students", "app")
CLI = ("distill.app.cli", "distill.app.commands", "distill.cli")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import``/``from ... import`` statement names, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _layer(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not distill's, or the package root)."""
    parts = module.split(".")
    if parts[0] in ("teachers", "students"):
        return parts[0]
    if parts[0] == "distill" and len(parts) > 1:
        return "app" if parts[1] == "cli" else parts[1] if parts[1] in LAYERS else None
    return None


def _layered_files() -> list[tuple[Path, str]]:
    files = [(p, p.relative_to(CORE).parts[0]) for p in sorted(CORE.rglob("*.py"))
             if len(p.relative_to(CORE).parts) > 1]
    return files + [(p, top) for top in ("teachers", "students") for p in sorted((ROOT / top).rglob("*.py"))]


def test_every_module_sits_in_a_layer_folder():
    loose = sorted(p.name for p in CORE.glob("*.py"))
    assert loose == ["__init__.py", "_moved.py", "cli.py"], loose  # the package root, the old paths, python -m
    assert {folder for _, folder in _layered_files()} == set(LAYERS)


def test_no_import_runs_upward():
    upward = [f"{p.relative_to(ROOT)}:{line} ({folder}) imports {module} ({_layer(module)})"
              for p, folder in _layered_files() for line, module in _imported_modules(p)
              if _layer(module) is not None and LAYERS.index(_layer(module)) > LAYERS.index(folder)]
    assert not upward, "\n".join(upward)


def test_no_code_uses_an_old_module_path():
    from distill._moved import MOVED

    old = [f"{p.relative_to(ROOT)}:{line} imports {module}" for p, _ in _layered_files()
           for line, module in _imported_modules(p) if module in MOVED or module == "distill.cli"]
    assert not old, "\n".join(old)


def test_the_layer_scan_sees_an_upward_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from students.lightgbm import LightGBMRanker\n    import distill.serve.app\n")
    modules = [m for _, m in _imported_modules(planted)]
    assert modules == ["students.lightgbm", "distill.serve.app"]
    assert [_layer(m) for m in modules] == ["students", "serve"]
    assert LAYERS.index("students") > LAYERS.index("teachers") > LAYERS.index("cache")


def test_old_module_paths_are_the_moved_modules():
    from distill._moved import MOVED

    script = ("import importlib, sys\n"
              f"moved = {MOVED!r}\n"
              "bad = [old for old, new in moved.items()\n"
              "       if importlib.import_module(old) is not importlib.import_module(new)]\n"
              "print(bad)\n")
    assert _python(script) == "[]"
    assert _python("from distill.cache import TeacherCache, read_scores; from distill.serve import ServeConfig, "
                   "create_app; from distill.cascade import Cascade; from distill.evaluation import evaluate; "
                   "import distill; print(distill.evaluate is evaluate, TeacherCache.__module__)") \
        == "True distill.cache.store"


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _own_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines without its docstring and without the functions and classes defined in it
    (they count on their own)."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1

    def nested(parent: ast.AST) -> list[ast.AST]:
        found = []
        for child in ast.iter_child_nodes(parent):
            found += [child] if isinstance(child, DEFS) else nested(child)
        return found

    for inner in nested(node):
        start = inner.decorator_list[0].lineno if inner.decorator_list else inner.lineno
        lines -= inner.end_lineno - start + 1
    return lines


def _size_violations(files: list[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(root)}: {len(text.splitlines())} lines")
        found += [f"{path.relative_to(root)}:{node.lineno} {node.name}(): {_own_lines(node)} lines"
                  for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and _own_lines(node) > MAX_FUNCTION_LINES]
    return found


def test_no_module_over_400_lines_and_no_function_over_60():
    """A standing rule (docstrings aside; a nested function counts on its own, not in its parent)."""
    files = [p for p, _ in _layered_files()] + sorted(CORE.glob("*.py"))
    violations = _size_violations(files)
    assert not violations, "\n".join(violations)


def test_the_size_rule_sees_a_long_function_and_not_its_docstring(tmp_path):
    long_body = "".join(f"    x{i} = {i}\n" for i in range(61))
    doc = '    """' + "\n" * 30 + '    """\n'
    (tmp_path / "long.py").write_text(f"def f():\n{long_body}")
    (tmp_path / "documented.py").write_text(f"def g():\n{doc}" + "".join(f"    y{i} = {i}\n" for i in range(59)))
    (tmp_path / "nested.py").write_text(f"def h():\n    def inner():\n{long_body.replace('    ', '        ')}"
                                        "    return inner\n")
    (tmp_path / "big.py").write_text("x = 1\n" * 401)
    found = _size_violations(sorted(tmp_path.glob("*.py")), root=tmp_path)
    assert found == ["big.py: 401 lines", "long.py:1 f(): 62 lines", "nested.py:2 inner(): 62 lines"]


def test_only_the_cli_imports_the_cli():
    """The library owns the work: the pipeline and distill.app.tasks call functions, never commands."""
    library = [p for p, _ in _layered_files()
               if p.name != "cli.py" and "commands" not in p.relative_to(ROOT).parts]
    assert CORE / "app" / "pipeline.py" in library and CORE / "app" / "tasks.py" in library
    found = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in library for line, name in _imported_names(p)
             if name.startswith(CLI)]
    assert not found, "\n".join(found)


def test_the_tasks_print_nothing():
    """The commands' path-and-settings layer returns results; the commands (and the demo's steps) print them."""
    tasks = [CORE / "app" / "tasks.py", CORE / "app" / "student_tasks.py"]
    printing = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in tasks for line, name in _imported_names(p)
                if name.split(".")[0] in ("rich", "typer") or name.startswith("distill.app.summaries")]
    printing += [f"{p.relative_to(ROOT)}:{node.lineno} calls print" for p in tasks
                 for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not printing, "\n".join(printing)


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module imported, and every ``module.name`` a ``from module import name`` names."""
    names = _imported_modules(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def lightgbm_cascade(tmp_path_factory, tiny_beir) -> Path:
    """A LightGBM student trained on BM25's scores and a spec ``bm25 % 10 >> lightgbm``."""
    from distill.cascade.model import Cascade, StageCost, stage
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.rankers.loading import load_ranker
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
        "from distill.rankers.loading import load_ranker\n"
        f"ranker = load_ranker({model!r})\n"
        f"cascade = load_ranker({str(lightgbm_cascade)!r})\n"
        "print(type(ranker).__name__, type(cascade).__name__, 'torch' in sys.modules)\n"
    )
    assert loaded == "LightGBMRanker Cascade False"
    # the check can fail: the training plumbing does bring torch in
    assert _python("import sys, distill.training.trainer; print('torch' in sys.modules)") == "True"


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
    import distill.evaluation.runner  # importing the modules does not replace the function

    assert callable(distill.evaluate) and distill.evaluate is distill.evaluation.runner.evaluate
    assert distill.evaluation.evaluate is distill.evaluate  # the package re-exports its old module's names


def test_ranker_kinds_come_from_the_entry_points():
    from distill.core.registry import RANKERS, TEACHERS

    assert {"teacher", "cross-encoder-student", "bi-encoder-student", "lightgbm-student", "cascade", "teacher-cache",
            "cross-encoder", "sentence-transformer"} <= set(RANKERS.kinds())
    assert {"cross-encoder", "generative"} <= set(TEACHERS.kinds())


def test_a_registered_loader_is_used_and_unknown_kinds_name_the_known(tmp_path):
    from distill.core.errors import InputError
    from distill.core.registry import RANKERS
    from distill.rankers.loading import RunRanker, load_ranker

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
