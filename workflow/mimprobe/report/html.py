"""headline.html and per_block.html: the report's tables as pages Snakemake's report viewer shows."""

from __future__ import annotations

from html import escape

from .tables import Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px; color: #1f2933;
       margin: 1.2rem; }
h1 { font-size: 1.35rem; margin: 0 0 0.3rem; } h2 { font-size: 1.15rem; margin: 1.6rem 0 0.4rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 0.2rem; } p.note { color: #52606d; margin: 0.1rem 0 0.5rem; }
table { border-collapse: collapse; margin-bottom: 0.6rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #d9e2ec; text-align: left; vertical-align: top;
         white-space: nowrap; }
td.wrap { white-space: normal; min-width: 6rem; }
th { background: #f0f4f8; font-weight: 600; } tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.best { font-weight: 700; }
"""


def _is_number(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell.startswith(("top1 ", "acc ")))


def table_html(table: Table) -> str:
    parts = [f"<h3>{escape(table.title)}</h3>"]
    if table.note:
        parts.append(f'<p class="note">{escape(table.note)}</p>')
    parts.append("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in table.header) + "</tr></thead><tbody>")
    for r, row in enumerate(table.rows):
        cells = []
        for c, cell in enumerate(row):
            numeric = c >= table.numeric_from and _is_number(cell)
            classes = " ".join(k for k, on in (("num", numeric), ("best", (r, c) in table.bold),
                                               ("wrap", c in table.wrap)) if on)
            text = escape(cell).replace(",", ",<wbr>") if c in table.wrap else escape(cell)  # settings break at commas
            cells.append(f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def render_page(title: str, intro: str, sections: dict[str, list[Table]]) -> str:
    body = [f"<h1>{escape(title)}</h1>", f'<p class="note">{escape(intro)}</p>']
    if not sections:
        body.append("<p>No probe produced results.</p>")
    for dataset, tables in sections.items():
        body.append(f"<h2>{escape(dataset)}</h2>")
        body += [table_html(t) for t in tables]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
