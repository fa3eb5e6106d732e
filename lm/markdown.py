"""Markdown tables for reports: stage files (laws.md) and the Prefect artifacts built on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def markdown_table(rows: Sequence[Mapping]) -> str:
    """A GitHub-flavoured table with the first row's keys as columns; ``_none_`` for no rows."""
    if not rows:
        return "_none_\n"
    cols = list(rows[0].keys())

    def esc(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(esc(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
