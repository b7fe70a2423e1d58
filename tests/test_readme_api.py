"""The README's Python example runs as written, on the tiny dataset and models."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS = re.compile(r"^DATA, TEACHER, STUDENT, OUT = .*$", re.MULTILINE)


def python_api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_python_example_runs(tiny_beir, tiny_cross_encoder, tiny_bi_encoder, tmp_path, capsys):
    code = python_api_example()
    assert len(code.strip().splitlines()) <= 16 and SETTINGS.search(code), "the example sets its paths on one line"
    code = SETTINGS.sub(f"DATA, TEACHER, STUDENT, OUT = {str(tiny_beir)!r}, {str(tiny_cross_encoder)!r}, "
                        f"{str(tiny_bi_encoder)!r}, Path({str(tmp_path)!r})", code)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)

    result = namespace["result"]
    assert result.rankers == ["bm25", "student"] and result.summary["nDCG@10"].is_finite().all()
    assert "student" in capsys.readouterr().out
    assert (tmp_path / "cache" / "manifest.json").is_file() and (tmp_path / "student").is_dir()
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "distill.json").is_file()
