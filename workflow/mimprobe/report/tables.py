"""The report's tables as plain cells, built once from the tidy table and rendered as Markdown, HTML
and text (`markdown.py`, `html.py`, `text.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .table import EXTRA_METRICS, POOLING_ORDER, best_rows, comparison_order, extra_metrics, per_block_rows


@dataclass
class Table:
    title: str
    note: str
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of the best value in a row or column
    numeric_from: int = 1  # columns from here on hold numbers (right-aligned in HTML)
    wrap: tuple[int, ...] = ()  # columns whose text may wrap in HTML


def pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def ci(row) -> str:
    return "" if pd.isna(row.ci_low) or pd.isna(row.ci_high) else f"{pct(row.ci_low)}–{pct(row.ci_high)}"


def value_with_ci(row) -> str:
    interval = ci(row)
    return f"{pct(row.value)} ({interval})" if interval else pct(row.value)


def backbone_header(rows: pd.DataFrame, backbone: str) -> str:
    baseline = rows[rows.backbone == backbone].baseline.iloc[0]
    return f"{backbone} ({baseline})" if baseline else backbone


def comparison_label(rows: pd.DataFrame, label: str) -> str:
    metric = rows[rows.comparison == label].metric.iloc[0]
    return label if metric == "top1" else f"{label} ({metric})"


def _bold_max(values: list[float], where) -> set:
    present = [v for v in values if not pd.isna(v)]
    if len(present) < 2:
        return set()
    return {where(i) for i, v in enumerate(values) if not pd.isna(v) and v == max(present)}


def at_a_glance(best: pd.DataFrame, dataset: str) -> Table:
    """Comparison x backbone: the selected record's test score with its 95% CI; the best in bold."""
    rows = best[best.dataset == dataset]
    backbones = sorted(rows.backbone.unique())
    table = Table(f"{dataset}: test % per probe and backbone",
                  "Block, pooling and setting chosen on validation (few-shot: at each shot count); the test "
                  "split scored once; 95% bootstrap CI in brackets.",
                  ["probe"] + [backbone_header(rows, b) for b in backbones], [])
    for r, label in enumerate(comparison_order(rows.comparison)):
        cells = rows[rows.comparison == label].set_index("backbone")
        values = [cells.value.get(b) for b in backbones]
        table.rows.append([comparison_label(rows, label)]
                          + [value_with_ci(cells.loc[b]) if b in cells.index else "" for b in backbones])
        table.bold |= _bold_max(values, lambda i, r=r: (r, i + 1))
    return table


def _pooling_cell(row) -> str:
    """The pooling, and for a record that combines arrays the blocks it reads."""
    if not row.combined_blocks:
        return row.pooling
    return f"{row.pooling} (block{'s' if '-' in row.combined_blocks else ''} {row.combined_blocks})"


def chosen_settings(table: pd.DataFrame, best: pd.DataFrame, dataset: str) -> Table:
    rows = best[best.dataset == dataset]
    out = Table(f"{dataset}: chosen block, pooling and setting",
                "Block with its relative depth, (block + 1) / blocks of that backbone; test is the headline "
                "metric (top1, or acc for probes without it) with its 95% bootstrap CI; val top-1 'none': the "
                "family has no validation split and takes the deepest block.",
                ["backbone", "probe", "block (depth)", "pooling", "setting", "val top-1", "test (95% CI)",
                 "other test metrics"], [], numeric_from=2, wrap=(3, 4, 7))
    for label in comparison_order(rows.comparison):
        for row in rows[rows.comparison == label].sort_values("value", ascending=False, kind="stable").itertuples():
            extras = extra_metrics(table, row)
            out.rows.append([row.backbone, comparison_label(rows, label), f"{row.block} ({row.depth:.2f})",
                             _pooling_cell(row),
                             row.setting, pct(row.val_score) or "none", value_with_ci(row),
                             ", ".join(f"{m} {pct(extras[m])}" for m in EXTRA_METRICS if m in extras)])
    return out


def per_block(rows: pd.DataFrame, dataset: str) -> list[Table]:
    """One table per backbone: a row per comparison and pooling, a column per stored block in depth
    order; records that combine blocks sit in their last block's column. The best block in bold."""
    tables = []
    rows = rows[rows.dataset == dataset]
    for backbone, group in rows.groupby("backbone", sort=True):
        blocks = sorted(set(group.block), key=lambda b: group[group.block == b].depth.iloc[0])
        depth = dict(zip(group.block, group.depth))
        count = int(group.block_count.iloc[0])
        blocks_word = "block" if count == 1 else "blocks"
        out = Table(f"{dataset} · {backbone_header(group, backbone)}: test % per block ({count} {blocks_word})",
                    "Setting chosen on validation at each block; columns in depth order, (block + 1) / blocks.",
                    ["probe", "pooling"] + [f"b{b} ({depth[b]:.2f})" for b in blocks], [], numeric_from=2)
        order = {label: i for i, label in enumerate(comparison_order(group.comparison))}
        keys = sorted({(r.comparison, r.pooling, r.combined_blocks) for r in group.itertuples()},
                      key=lambda k: (order[k[0]], k[2] != "", POOLING_ORDER.get(k[1], len(POOLING_ORDER)), k[1]))
        for r, (label, pooling, combined) in enumerate(keys):
            cells = group[(group.comparison == label) & (group.pooling == pooling)].set_index("block")
            values = [cells.value.get(b) for b in blocks]
            name = f"{pooling} (combines block{'s' if '-' in combined else ''} {combined})" if combined else pooling
            out.rows.append([comparison_label(group, label), name] + [pct(v) for v in values])
            if not combined:
                out.bold |= _bold_max(values, lambda i, r=r: (r, i + 2))
        tables.append(out)
    return tables


def per_shot(best: pd.DataFrame, dataset: str) -> list[Table]:
    """Families compared per shot count: a column per shot count, each chosen on validation at that count."""
    tables = []
    rows = best[(best.dataset == dataset) & (best.comparison != best.probe)]
    for probe, group in rows.groupby("probe", sort=True):
        labels = comparison_order(group.comparison)
        backbones = sorted(group.backbone.unique())
        out = Table(f"{dataset}: {probe} test % per shot count",
                    "Equal shots per column; each cell's block and pooling chosen on validation at that shot "
                    "count (mean over draws, 95% CI).",
                    ["backbone"] + [label.removeprefix(f"{probe} ") for label in labels], [])
        for backbone in backbones:
            cells = group[group.backbone == backbone].set_index("comparison")
            out.rows.append([backbone_header(group, backbone)]
                            + [f"{value_with_ci(cells.loc[c])} · b{cells.loc[c].block} {cells.loc[c].pooling}"
                               if c in cells.index else "" for c in labels])
        for c, label in enumerate(labels):
            values = [group[(group.backbone == b) & (group.comparison == label)].value.max() for b in backbones]
            out.bold |= _bold_max(values, lambda i, c=c: (i, c + 1))
        tables.append(out)
    return tables


def confused_pairs(info: dict, dataset: str) -> Table:
    return Table(f"{dataset}: most-confused class pairs ({info['title']})", "",
                 ["true class", "predicted as", "test images", "share of the true class"],
                 [[p["true"], p["predicted"], str(p["count"]), pct(p["share"])] for p in info["pairs"]], numeric_from=2)


def report_tables(table: pd.DataFrame, confused: dict | None = None) -> dict[str, dict[str, list[Table]]]:
    """{dataset: {"headline": [...], "per_block": [...], "errors": [...]}}."""
    best, blocks = best_rows(table), per_block_rows(table)
    out = {}
    for dataset in sorted(table.dataset.unique()):
        out[dataset] = {
            "headline": [at_a_glance(best, dataset), chosen_settings(table, best, dataset)] + per_shot(best, dataset),
            "per_block": per_block(blocks, dataset),
            "errors": [confused_pairs(confused[dataset], dataset)] if confused and dataset in confused else [],
        }
    return out
