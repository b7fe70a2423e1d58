"""The README a newcomer reads: short, opening with the two commands, its links alive, and every
results page in docs/ naming the command that produced its figures."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_opens_with_the_two_commands():
    assert len(README.splitlines()) <= 200
    first_block = README.split("```", 2)[1]
    commands = [line for line in first_block.splitlines() if line and not line.startswith(("#", "bash"))]
    assert len(commands) == 2
    assert "pip install" in commands[0] and "distill demo" in commands[0]
    assert commands[1].startswith("python -m pytest")


def test_readme_and_docs_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_every_results_page_names_its_command():
    for page in sorted((ROOT / "docs" / "results").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert re.search(r"(^|`)(\S+=\S+ )*(nice -n \d+ )?(python scripts/|bash scripts/|distill )", text, re.M), \
            f"{page.name} gives no command for its figures"
