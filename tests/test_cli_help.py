"""``--help`` of every command says each option's default (typer's ``[default: x]``, or the help
text's own ``[...]`` where the default is None and depends on something) and shows help texts as
written: rich_markup_mode="markdown" keeps ``[...]``, but would drop an unquoted ``<split>`` as
HTML. Also: bad values the CLI must refuse, and ``distill --help`` staying light (no torch)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from distill.app.cli import app, main, register_commands


def commands() -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command and command group of the CLI with its path, the app itself first."""
    register_commands()

    def walk(command, path):
        yield path, command
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


COMMANDS = dict(commands())
PARAMS = [(path, param) for path, command in COMMANDS.items() for param in command.params if param.name != "help"]
OPTIONS = [(path, param) for path, param in PARAMS if param.param_type_name == "option" and not param.is_bool_flag]


def _render(path: tuple[str, ...]) -> str:
    """``distill PATH --help`` on a terminal wide enough that no help text wraps."""
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=3000, env={"COLUMNS": "3000"})
    assert result.exit_code == 0, result.output
    return result.output


RENDERED = {path: _render(path) for path in COMMANDS}


@pytest.mark.parametrize(("path", "param"), OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.opts[0])
def test_every_option_says_its_default(path, param):
    shown = param.default is not None and param.show_default is not False and param.default != []
    described = re.search(r"\[[^\]]+\]", param.help or "") is not None
    assert param.required or shown or described, (
        f"distill {' '.join(path)} {param.opts[0]}: no default shown; say it in the help as [what happens]")


@pytest.mark.parametrize(("path", "param"), PARAMS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.name)
def test_every_help_text_shows_as_written(path, param):
    """Markdown drops <tags> and eats `code` quotes only: the rest must appear verbatim."""
    text = " ".join((param.help or "").replace("`", "").split())
    rendered = " ".join(RENDERED[path].replace("│", " ").split())
    assert text in rendered, f"distill {' '.join(path)} {param.opts[0]}: help shows differently from {text!r}"


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "distill")
def test_no_empty_default_and_no_swallowed_bracket(path):
    out = RENDERED[path]
    assert "[default: None]" not in out and "[default: ]" not in out
    swallowed = [line for line in out.splitlines() if re.search(r" \.(\s|$)", line)]
    assert not swallowed, swallowed


def test_every_command_is_walked():
    assert {("score-teacher",), ("train-student",), ("cascade", "build"), ("serve",)} <= set(COMMANDS)
    assert len(OPTIONS) > 100


# -- values the CLI refuses --------------------------------------------------------------------

def _exit(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("path", "option", "value"), [
    (("train-student",), "--scale", "-5"), (("train-student",), "--scale", "0"),
    (("serve",), "--threads", "2147498861"), (("serve",), "--threads", "0")])
def test_an_out_of_range_value_is_refused(path, option, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _exit([*path, option, value], capsys)
    assert code == 2 and option in err and err.strip().count("\n") == 0, err
    assert not any(tmp_path.iterdir())


def _tiny_cache(folder, data):
    """A teacher cache of BM25's scores on the tiny train split (its scores do not matter here)."""
    from distill.cache.store import TeacherCache
    from distill.core.manifest import frame_hash
    from distill.core.schema import DOCID, QID, SCORE
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run

    dataset = load_beir(data, "train")
    cache = TeacherCache.create_or_open(folder, {"kind": "planted", "model": "bm25"}, frame_hash(dataset.corpus))
    cache.append(bm25_run(dataset, 5).select(QID, DOCID, SCORE))
    return folder


@pytest.mark.parametrize("init", ["bi", "no-such-model"])
def test_train_student_init_that_is_not_a_model_is_one_line_naming_it(init, tiny_beir, tmp_path, capsys, monkeypatch):
    """A relative folder that holds no model, or a hub id not to be had: exit 2 naming it, before training."""
    cache = _tiny_cache(tmp_path / "cache", tiny_beir)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bi").mkdir()
    (tmp_path / "bi" / "notes.txt").write_text("not a model", encoding="utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()  # the cache's own log lines
    for student in ("bi-encoder", "cross-encoder"):
        code, err = _exit(["train-student", "--student", student, "--cache", cache, "--data", tiny_beir,
                           "--split", "train", "--loss", "MarginMSE", "--init", init, "--out", f"out-{student}"],
                          capsys)
        assert code == 2 and err.strip().count("\n") == 0, err
        assert f"error: {init}: " in err and "unexpected" not in err, err
        assert not (tmp_path / f"out-{student}").exists()


def test_distill_help_does_not_import_torch():
    code = ("import sys, distill.app.cli\n"
            "distill.app.cli.register_commands()\n"
            "heavy = ('torch', 'transformers', 'sentence_transformers', 'lightgbm')\n"
            "heavy = sorted(m for m in heavy if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "distill.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "score-teacher" in done.stdout, done.stderr
