"""Showing rows of results as a plain-text table in a notebook (deterministic, so nbval can compare it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "format_table",
    "show_table",
]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an aligned plain-text table.

    Columns default to every key seen, in order of appearance. Floats get 4 decimals, missing
    values ``-``, SHA-256 digests (a ``sha256`` column) their first 12 hex digits.

    Taught in notebooks/05b_torchrun_elastic.ipynb.
    """
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        if key == "sha256" and isinstance(value, str):
            return value[:12]
        return str(value)

    table = [[str(c) for c in columns]] + [[cell(c, row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def show_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Print ``format_table(rows, columns)``.

    Taught in notebooks/01b_big_models.ipynb.
    """
    print(format_table(rows, columns))
