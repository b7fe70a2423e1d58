"""The docs' loss table, generated from the registry: ``python -m distill.training.losses.describe``
writes docs/losses.md (``--check`` only compares, exit 1 on drift); a test fails when the
file and :func:`distill.training.losses.describe_losses` disagree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.training.losses import describe_losses

DOC = Path(__file__).resolve().parents[3] / "docs" / "losses.md"

HEADER = """# Distillation losses

Generated from the registry (`distill.training.losses.describe_losses()`) by
`python -m distill.training.losses.describe`; do not edit by hand. Pick one with
`distill train-student --loss NAME --loss-param key=value`; `--hard-label-weight` mixes the
hard-label term in. Every loss takes `student [B, L]`, `teacher [B, L]`, `mask [B, L]` and
optional qrels `labels [B, L]` (column 0 of a sampled group is its positive), except the
`in_batch` ones, whose student scores are `[B, B*L]`: each query against every document of the
batch, which only the bi-encoder student computes (other queries' documents are negatives; the
teacher's scores are used only within a query's own group, as Lightning IR does).
Each class's docstring gives the details and its citation; `docs/results/losses.md` compares
them on SciFact.

Notation: `s` student scores, `t` teacher scores, `y` qrels labels, `T` temperature, `pi` the
teacher's order, `r` smooth (approximate) ranks.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """docs/losses.md's text: one table row per loss, in the registry's family order."""
    lines = [HEADER, "| Loss | Family | Signature | Parameters | Formula | When to use |", "|---|---|---|---|---|---|"]
    for row in describe_losses():
        cells = [f"`{row['name']}`", row["family"], row["signature"], f"`{row['parameters']}`" if row["parameters"]
                 else "", f"`{row['formula']}`", row["when_to_use"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from distill.core.io import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOC, help="File to write (default: docs/losses.md).")
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 when the file differs.")
    args = parser.parse_args(argv)
    text = render_markdown()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m distill.training.losses.describe", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
