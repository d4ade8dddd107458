"""Every probe JSON -> one tidy table, and the one rule that picks a best record.

`select_best` is the only place a "best" record is chosen: the report, `mimprobe probe`'s summary
and `mimprobe predict` all call it. Records compete within a comparison: a probe family, or, for
settings `shots=N` (few-shot), a family at one shot count, so 1-shot never competes with 10-shot.

The table written to metrics.csv has COLUMNS; in memory each row also carries what the report
derives from the probe JSONs and stores (the selection, relative depth, baseline kind), so every
table and figure reads one frame.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from ..layout import store_path

COLUMNS = ["backbone", "dataset", "block", "pooling", "probe", "setting", "split", "metric", "value",
           "ci_low", "ci_high"]
SORT = ["dataset", "backbone", "probe", "block", "pooling", "split", "setting", "metric"]
HEADLINE_METRICS = ("top1", "acc")
EXTRA_METRICS = ("top5", "macro_f1", "superclass_top1", "nmi", "ami", "ari")
POOLING_ORDER = {"cls": 0, "flat": 1, "mean": 2, "tokens": 3}
SHOTS = re.compile(r"shots=(\d+)")
# model spec kind (`pixels`, `random:<arch>`) -> what the baseline is
BASELINES = {"pixels": "raw pixels", "random": "random init"}


def setting_key(setting: str) -> tuple:
    """Natural order: 'shots=10' after 'shots=2'."""
    return tuple((0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
                 for part in re.split(r"(\d+(?:\.\d+)?)", str(setting)) if part)


def comparison(probe: str, setting: str) -> str:
    """What a record competes within: its family, or a few-shot family at one shot count."""
    match = SHOTS.fullmatch(str(setting))
    return f"{probe} {match.group(1)}-shot" if match else probe


def validation_score(record: Mapping) -> float | None:
    """Validation top-1 of the record's own setting, else the best it saw; None without validation."""
    validation = record.get("validation") or {}
    if record["setting"] in validation:
        return float(validation[record["setting"]])
    return max(map(float, validation.values()), default=None)


def selection_key(record: Mapping) -> tuple:
    """Larger is better: validation top-1, deepest block, preferred pooling, last setting in natural order."""
    score = validation_score(record)
    return (-math.inf if score is None else score, record["block"],
            -POOLING_ORDER.get(record["pooling"], len(POOLING_ORDER)), setting_key(record["setting"]))


def select_best(records: Iterable[Mapping]) -> Mapping | None:
    """The best of records that compete with each other (one comparison); None when there are none."""
    return max(records, key=selection_key, default=None)


def best_by_comparison(probe: str, records: Iterable[Mapping]) -> dict[str, Mapping]:
    """{comparison: best record} of one family's records, comparisons in natural order."""
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(comparison(probe, record["setting"]), []).append(record)
    return {label: select_best(groups[label]) for label in sorted(groups, key=setting_key)}


def store_attrs(embeddings: str | Path | None, backbone: str, dataset: str) -> dict:
    """The store's root attributes (model, block_count, ...), or {} when the store is not there."""
    if embeddings is None:
        return {}
    path = Path(store_path(backbone, dataset, embeddings)) / "zarr.json"
    try:
        return json.loads(path.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}


def backbone_facts(payload: dict, embeddings: str | Path | None) -> dict:
    """Model spec, number of blocks and baseline kind: the probe JSON's keys, else the store's attrs.

    Without either, the deepest probed block counts as the last one."""
    attrs = store_attrs(embeddings, payload["backbone"], payload["dataset"])
    model = payload.get("model", attrs.get("model", ""))
    count = payload.get("block_count", attrs.get("block_count"))
    if count is None:
        count = 1 + max((r["block"] for r in payload["results"]), default=0)
    return {"model": model, "block_count": int(count), "baseline": BASELINES.get(model.partition(":")[0], "")}


def _combined_blocks(record: dict) -> str:
    """For a record that reads several stored arrays (the linear grid's concatenations) the blocks
    they come from ('8-11', or '11' for cls+mean of one block), else ''."""
    blocks = record.get("feature_set", {}).get("blocks", [record["block"]])
    if len(blocks) < 2:
        return ""
    return str(blocks[0]) if min(blocks) == max(blocks) else f"{min(blocks)}-{max(blocks)}"


def tidy_rows(payload: dict, facts: dict | None = None) -> list[dict]:
    """Rows of one probe JSON: COLUMNS plus the in-memory columns (see the module docstring)."""
    facts = facts or backbone_facts(payload, None)
    base = {"backbone": payload["backbone"], "dataset": payload["dataset"], "probe": payload["probe"]}
    records = payload["results"]
    chosen = {id(r) for r in best_by_comparison(payload["probe"], records).values()}
    per_block = {}
    for record in records:
        per_block.setdefault((record["block"], record["pooling"]), []).append(record)
    chosen_at_block = {id(r) for group in per_block.values()
                       for r in best_by_comparison(payload["probe"], group).values()}
    rows = []
    for record in records:
        where = base | {"block": record["block"], "pooling": record["pooling"]}
        memory = facts | {"depth": (record["block"] + 1) / facts["block_count"],
                          "block_name": record.get("block_name", str(record["block"])),
                          "combined_blocks": _combined_blocks(record)}
        for setting, score in record.get("validation", {}).items():
            rows.append(where | {"setting": setting, "split": "val", "metric": "top1", "value": score,
                                 "ci_low": None, "ci_high": None} | memory
                        | {"comparison": comparison(payload["probe"], setting)})
        score = validation_score(record)
        for metric, stat in record["test"].items():
            rows.append(where | {"setting": record["setting"], "split": "test", "metric": metric} | stat | memory
                        | {"comparison": comparison(payload["probe"], record["setting"]),
                           "val_score": score, "selected": id(record) in chosen,
                           "selected_at_block": id(record) in chosen_at_block})
    return rows


MEMORY_COLUMNS = ["model", "block_count", "baseline", "depth", "block_name", "combined_blocks", "comparison",
                  "val_score", "selected", "selected_at_block"]


def build_table(probe_jsons: Iterable[str | Path], embeddings: str | Path | None = None) -> pd.DataFrame:
    """The tidy table of every probe JSON (metrics.csv is its COLUMNS), sorted as metrics.csv is."""
    return table_from_payloads([json.loads(Path(path).read_text()) for path in probe_jsons], embeddings)


def table_from_payloads(payloads: Iterable[dict], embeddings: str | Path | None = None) -> pd.DataFrame:
    rows = []
    for payload in payloads:
        rows.extend(tidy_rows(payload, backbone_facts(payload, embeddings)))
    table = pd.DataFrame(rows, columns=COLUMNS + MEMORY_COLUMNS)
    table[["selected", "selected_at_block"]] = table[["selected", "selected_at_block"]].fillna(False).astype(bool)
    return table.sort_values(SORT, kind="stable").reset_index(drop=True)


def write_csv(table: pd.DataFrame, path) -> None:
    table[COLUMNS].to_csv(path, index=False)


def headline_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Test rows of each probe's headline metric (top1, else acc)."""
    test = table[table.split == "test"]
    parts = []
    for _, rows in test.groupby("probe", sort=True):
        metric = next((m for m in HEADLINE_METRICS if (rows.metric == m).any()), rows.metric.iloc[0])
        parts.append(rows[rows.metric == metric])
    return pd.concat(parts) if parts else test.iloc[0:0]


def comparison_order(labels) -> list[str]:
    return sorted(set(labels), key=setting_key)


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone and comparison: the selected record's headline test row."""
    rows = headline_rows(table)
    rows = rows[rows.selected]
    order = {c: i for i, c in enumerate(comparison_order(rows.comparison))}
    return (rows.assign(_order=rows.comparison.map(order))
            .sort_values(["dataset", "_order", "backbone"], kind="stable").drop(columns="_order")
            .reset_index(drop=True))


def per_block_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone, comparison, block and pooling: the setting selection picks there."""
    rows = headline_rows(table)
    return rows[rows.selected_at_block].sort_values(["dataset", "backbone", "comparison", "depth", "pooling"],
                                                    kind="stable").reset_index(drop=True)


def best_overall(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the validated selected rows, best first by the selection rule (never test)."""
    rows = best_rows(table)
    rows = rows[rows.val_score.notna()]
    candidates = [{"validation": {r.setting: r.val_score}, "block": r.block, "pooling": r.pooling,
                   "setting": r.setting, "position": i, "dataset": r.dataset} for i, r in enumerate(rows.itertuples())]
    ranked = sorted(candidates, key=selection_key, reverse=True)
    ranked.sort(key=lambda c: c["dataset"])  # stable: best first within each dataset
    return rows.iloc[[c["position"] for c in ranked]]


def extra_metrics(table: pd.DataFrame, row) -> dict[str, float]:
    """The other test metrics of a selected row's record."""
    test = table[(table.split == "test") & (table.dataset == row.dataset) & (table.backbone == row.backbone)
                 & (table.probe == row.probe) & (table.block == row.block) & (table.pooling == row.pooling)
                 & (table.setting == row.setting)]
    return {m: v for m, v in zip(test.metric, test.value) if m in EXTRA_METRICS and m != row.metric}
