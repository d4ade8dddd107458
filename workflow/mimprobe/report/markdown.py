"""metrics.md: every table of the report as Markdown."""

from __future__ import annotations

from .tables import Table


def table_lines(table: Table) -> list[str]:
    lines = [f"### {table.title}", ""] + ([table.note, ""] if table.note else [])
    lines += ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    for r, row in enumerate(table.rows):
        cells = [f"**{cell}**" if (r, c) in table.bold and cell else cell for c, cell in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render_markdown(sections: dict[str, dict[str, list[Table]]], note: str = "") -> str:
    lines = ["# mimprobe results", ""] + ([note, ""] if note else [])
    if not sections:
        lines += ["No probe produced results.", ""]
    for dataset, parts in sections.items():
        lines += [f"## {dataset}", ""]
        for name in ("headline", "per_block", "errors"):
            for table in parts[name]:
                lines += table_lines(table)
    return "\n".join(lines)
