"""Aggregation: every probe JSON -> one tidy metrics.csv, then metrics.md and plots from that table.

Nothing here names a probe family: a new family's rows appear in every table and plot. A family's
headline metric is `top1`, or `acc` for families without it (k-means); its chosen setting is the
one with the best validation top-1, or, for families without validation rows, the deepest block.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path

COLUMNS = ["backbone", "dataset", "block", "pooling", "probe", "setting", "split", "metric", "value",
           "ci_low", "ci_high"]
HEADLINE_METRICS = ("top1", "acc")
EXTRA_METRICS = ("top5", "macro_f1", "superclass_top1", "nmi", "ami", "ari")
POOLING_ORDER = {"cls": 0, "flat": 1, "mean": 2, "tokens": 3}
GROUP = ["dataset", "backbone", "probe"]


def tidy_rows(payload: dict) -> list[dict]:
    base = {"backbone": payload["backbone"], "dataset": payload["dataset"], "probe": payload["probe"]}
    rows = []
    for result in payload["results"]:
        where = base | {"block": result["block"], "pooling": result["pooling"]}
        for setting, score in result.get("validation", {}).items():
            rows.append(where | {"setting": setting, "split": "val", "metric": "top1", "value": score,
                                 "ci_low": None, "ci_high": None})
        for metric, stat in result["test"].items():
            rows.append(where | {"setting": result["setting"], "split": "test", "metric": metric} | stat)
    return rows


def build_table(probe_jsons: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in probe_jsons:
        rows.extend(tidy_rows(json.loads(Path(path).read_text())))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["dataset", "backbone", "probe", "block", "pooling", "split", "setting",
                              "metric"], kind="stable").reset_index(drop=True)


def setting_key(setting: str) -> tuple:
    """Natural order: 'shots=10' after 'shots=2'."""
    return tuple((0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
                 for part in re.split(r"(\d+(?:\.\d+)?)", str(setting)) if part)


def headline_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Test rows of each probe's headline metric (top1, else acc)."""
    test = table[table.split == "test"]
    parts = []
    for _, rows in test.groupby("probe", sort=True):
        metric = next((m for m in HEADLINE_METRICS if (rows.metric == m).any()), rows.metric.iloc[0])
        parts.append(rows[rows.metric == metric])
    return pd.concat(parts) if parts else test.iloc[0:0]


def with_selection_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Headline test rows plus `val_score`: the validation top-1 of that setting, else of its block/pooling."""
    rows = headline_rows(table).copy()
    val = table[(table.split == "val") & (table.metric == "top1")]
    where = GROUP + ["block", "pooling"]
    exact = val[where + ["setting", "value"]].rename(columns={"value": "val_exact"})
    pair = val.groupby(where, as_index=False)["value"].max().rename(columns={"value": "val_pair"})
    rows = rows.merge(exact, on=where + ["setting"], how="left").merge(pair, on=where, how="left")
    rows["val_score"] = rows.val_exact.fillna(rows.val_pair)
    rows["selected_by"] = np.where(rows.val_score.notna(), "validation", "deepest block (no validation)")
    return rows.drop(columns=["val_exact", "val_pair"])


def _selection_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Best first: validation score, then deepest block, preferred pooling, last setting (most shots)."""
    natural = {s: i for i, s in enumerate(sorted(rows.setting.unique(), key=setting_key))}
    rows = rows.assign(_pool=rows.pooling.map(POOLING_ORDER).fillna(9), _setting=rows.setting.map(natural))
    rows = rows.assign(_val=rows.val_score.fillna(-1.0))
    ordered = rows.sort_values(["_val", "block", "_pool", "_setting"], ascending=[False, False, True, False],
                               kind="stable")
    return ordered.drop(columns=["_pool", "_setting", "_val"])


def best_per_family(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone and probe: the selected block, pooling and setting with its test score."""
    rows = _selection_order(with_selection_scores(table))
    return rows.groupby(GROUP, sort=True).head(1).sort_values(GROUP).reset_index(drop=True)


def one_setting_per_block(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone, probe, block and pooling: the setting selection would pick there."""
    rows = _selection_order(with_selection_scores(table))
    return rows.groupby(GROUP + ["block", "pooling"], sort=True).head(1).reset_index(drop=True)


def best_overall(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the validated (backbone, probe, block, pooling) candidates, best first."""
    best = best_per_family(table)
    best = best[best.val_score.notna()]
    return best.sort_values(["dataset", "val_score"], ascending=[True, False], kind="stable")  # never test


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def _extras(table: pd.DataFrame, row) -> str:
    test = table[(table.split == "test") & (table.dataset == row.dataset) & (table.backbone == row.backbone)
                 & (table.probe == row.probe) & (table.block == row.block) & (table.pooling == row.pooling)
                 & (table.setting == row.setting)]
    values = dict(zip(test.metric, test.value))
    return ", ".join(f"{m} {_pct(values[m])}" for m in EXTRA_METRICS if m in values and m != row.metric)


def _best_section(table: pd.DataFrame, dataset: str, best: pd.DataFrame) -> list[str]:
    lines = [f"## {dataset}: best setting per probe and backbone", "",
             "Block, pooling and setting chosen on the validation split; the test split scored once "
             "(%, 95% bootstrap CI).", "",
             "| backbone | probe | block | pooling | setting | val top-1 | test | 95% CI | other test metrics |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in best.sort_values(["probe", "value"], ascending=[True, False]).itertuples():
        chosen = "" if row.selected_by == "validation" else " (deepest block; no validation)"
        lines.append(f"| {row.backbone} | {row.probe} | {row.block} | {row.pooling} | {row.setting}{chosen} | "
                     f"{_pct(row.val_score)} | {row.metric} {_pct(row.value)} | "
                     f"{_pct(row.ci_low)}–{_pct(row.ci_high)} | {_extras(table, row)} |")
    return lines + [""]


def _per_block_section(per_block: pd.DataFrame, dataset: str) -> list[str]:
    pivot = per_block.pivot_table(index=["backbone", "probe", "pooling"], columns="block", values="value",
                                  aggfunc="first")
    lines = [f"### {dataset}: test headline metric % per block", "",
             "| backbone | probe | pooling | " + " | ".join(f"block {b}" for b in pivot.columns) + " |",
             "|---|---|---|" + "---|" * len(pivot.columns)]
    for index, values in pivot.iterrows():
        lines.append("| " + " | ".join(map(str, index)) + " | " + " | ".join(_pct(v) for v in values) + " |")
    return lines + [""]


def _per_setting_sections(headline: pd.DataFrame, dataset: str) -> list[str]:
    """Families that report several test settings per block (few-shot): one column per setting."""
    lines = []
    for probe, rows in headline[headline.dataset == dataset].groupby("probe"):
        if rows.groupby(["backbone", "block", "pooling"]).setting.nunique().max() < 2:
            continue
        deepest = rows[rows.block == rows.groupby("backbone").block.transform("max")]
        settings = sorted(deepest.setting.unique(), key=setting_key)
        lines += [f"### {dataset}: {probe} test % per setting (deepest block; mean, 95% CI)", "",
                  "| backbone | block | pooling | " + " | ".join(settings) + " |",
                  "|---|---|---|" + "---|" * len(settings)]
        for (backbone, block, pooling), group in deepest.groupby(["backbone", "block", "pooling"]):
            by_setting = {r.setting: f"{_pct(r.value)} ({_pct(r.ci_low)}–{_pct(r.ci_high)})"
                          for r in group.itertuples()}
            lines.append(f"| {backbone} | {block} | {pooling} | " +
                         " | ".join(by_setting.get(s, "") for s in settings) + " |")
        lines.append("")
    return lines


def render_markdown(table: pd.DataFrame, confused: dict[str, dict] | None = None) -> str:
    lines = ["# mimprobe results", ""]
    best = best_per_family(table)
    per_block = one_setting_per_block(table)
    headline = headline_rows(table)
    for dataset in sorted(table.dataset.unique()):
        lines += _best_section(table, dataset, best[best.dataset == dataset])
        lines += _per_block_section(per_block[per_block.dataset == dataset], dataset)
        lines += _per_setting_sections(headline, dataset)
        if confused and dataset in confused:
            info = confused[dataset]
            lines += [f"### {dataset}: most-confused class pairs ({info['title']})", "",
                      "| true class | predicted as | test images | share of the true class |", "|---|---|---|---|"]
            lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {_pct(p['share'])} |"
                      for p in info["pairs"]]
            lines.append("")
    return "\n".join(lines)


def write_report(probe_jsons, out_dir: str | Path, embeddings_dir: str | Path = "results/embeddings") -> pd.DataFrame:
    from . import report_plots

    out_dir = Path(out_dir)
    table = build_table(probe_jsons)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    confused = report_plots.draw_all(table, [Path(p) for p in probe_jsons], Path(embeddings_dir), out_dir / "plots")
    with atomic_path(out_dir / "metrics.md") as tmp:
        tmp.write_text(render_markdown(table, confused))
    return table
