"""headline.txt: the at-a-glance table of each dataset as plain text that is also reStructuredText
(a simple table), so the terminal prints it and the HTML report's landing page renders it."""

from __future__ import annotations

import textwrap

from .tables import Table

GAP = "  "


def simple_table(table: Table) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(table.header, *table.rows)]
    rule = GAP.join("=" * w for w in widths)

    def line(cells):
        return GAP.join(str(cell).ljust(w) for cell, w in zip(cells, widths)).rstrip()

    return [rule, line(table.header), rule] + [line(row) for row in table.rows] + [rule]


def render_headline(sections: dict) -> str:
    """Every dataset's at-a-glance table (the first headline table), titled, blank-line separated."""
    if not sections:
        return "No probe produced results.\n"
    lines = []
    for parts in sections.values():
        table = parts["headline"][0]
        lines += textwrap.wrap(f"{table.title}. {table.note}", 100) + [""] + simple_table(table) + [""]
    return "\n".join(lines)
