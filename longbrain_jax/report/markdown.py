"""Markdown pieces of a run report."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value: object, digits: int) -> str:
    """One cell's text: floats to `digits` significant digits, NaN as "-", and every "|" escaped, so
    that "|J|" or a dataset's group name holding a pipe stays inside its cell."""
    if isinstance(value, float):
        if value != value:  # NaN: not applicable
            return "-"
        if abs(value) < 1e-9:
            return "0"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; floats to `digits` significant digits."""
    lines = ["| " + " | ".join(_cell(h, digits) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
