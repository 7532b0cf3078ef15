"""`soulstone --help`: the top-level help, drawn without rich (the CLI's fastest path).

Typer's rich help imports rich's markdown and traceback modules (about 40 ms,
a quarter of the command's whole run); the top-level help only needs two
boxed tables, drawn here with the same box characters. Every command's own
help stays typer's.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Sequence

Row = tuple[str, str, str]  # name, metavar (may be ""), help


def help_width() -> int:
    """Columns to draw in: $COLUMNS, the terminal's width, or 100 on a pipe; 120 at most."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return min(int(columns), 120)
    return min(shutil.get_terminal_size((100, 24)).columns, 120)


def panel(title: str, rows: Sequence[Row], width: int) -> list[str]:
    """A rounded box titled `title`, one row per entry, help text wrapped in its column."""
    inner = width - 4  # "│ " and " │"
    name_width = max(len(name) for name, _, _ in rows)
    meta_width = max(len(meta) for _, meta, _ in rows)
    left = name_width + 2 + (meta_width + 2 if meta_width else 0)
    text_width = max(inner - left, 20)
    lines = ["╭─ " + title + " " + "─" * max(width - len(title) - 5, 0) + "╮"]
    for name, meta, text in rows:
        head = name.ljust(name_width + 2) + (meta.ljust(meta_width + 2) if meta_width else "")
        wrapped = textwrap.wrap(text, text_width) or [""]
        for index, part in enumerate(wrapped):
            start = head if index == 0 else " " * left
            lines.append("│ " + (start + part).ljust(inner) + " │")
    lines.append("╰" + "─" * (width - 2) + "╯")
    return lines


def top_help(usage: str, description: str, options: Sequence[Row], commands: Sequence[Row],
             width: int) -> str:  # fmt: skip
    """The whole top-level help: usage, description, the options and commands boxes."""
    lines = ["", f" Usage: {usage}", ""]
    lines += [" " + part for part in textwrap.wrap(description, width - 2)]
    lines.append("")
    lines += panel("Options", options, width)
    lines += panel("Commands", commands, width)
    return "\n".join(lines) + "\n"
