"""Aggregation: every probe JSON -> one tidy metrics.csv, then metrics.md and plots from that table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_path

COLUMNS = ["backbone", "dataset", "block", "pooling", "probe", "setting", "split", "metric", "value",
           "ci_low", "ci_high"]


def tidy_rows(payload: dict) -> list[dict]:
    base = {"backbone": payload["backbone"], "dataset": payload["dataset"], "probe": payload["probe"]}
    rows = []
    for result in payload["results"]:
        where = base | {"block": result["block"], "pooling": result["pooling"]}
        for setting, score in result["validation"].items():
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


def best_per_family(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone and probe: the (block, pooling) with the best validation top-1."""
    val = table[(table.split == "val") & (table.metric == "top1")]
    best_val = val.loc[val.groupby(["dataset", "backbone", "probe"])["value"].idxmax()]
    test = table[(table.split == "test") & (table.metric == "top1")]
    merged = best_val.merge(test, on=["dataset", "backbone", "probe", "block", "pooling", "setting"],
                            suffixes=("_val", ""))
    return merged[["dataset", "backbone", "probe", "block", "pooling", "setting", "value_val", "value",
                   "ci_low", "ci_high"]]


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def render_markdown(table: pd.DataFrame) -> str:
    lines = ["# mimprobe results", ""]
    best = best_per_family(table)
    for dataset, group in best.groupby("dataset"):
        lines += [f"## {dataset}: best setting per probe (chosen on validation; test top-1 %, 95% CI)", "",
                  "| backbone | probe | block | pooling | setting | val top-1 | test top-1 | 95% CI |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in group.sort_values(["probe", "value"], ascending=[True, False]).itertuples():
            lines.append(f"| {row.backbone} | {row.probe} | {row.block} | {row.pooling} | {row.setting} | "
                         f"{_pct(row.value_val)} | {_pct(row.value)} | {_pct(row.ci_low)}–{_pct(row.ci_high)} |")
        lines.append("")
        per_block = table[(table.dataset == dataset) & (table.split == "test") & (table.metric == "top1")]
        pivot = per_block.pivot_table(index=["backbone", "probe", "pooling"], columns="block", values="value")
        lines += [f"### {dataset}: test top-1 % per block", "",
                  "| backbone | probe | pooling | " + " | ".join(f"block {b}" for b in pivot.columns) + " |",
                  "|---|---|---|" + "---|" * len(pivot.columns)]
        for index, values in pivot.iterrows():
            lines.append("| " + " | ".join(map(str, index)) + " | " +
                         " | ".join(_pct(v) for v in values) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_accuracy_per_block(table: pd.DataFrame, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = table[(table.split == "test") & (table.metric == "top1")]
    probes = sorted(test.probe.unique())
    backbones = sorted(test.backbone.unique())
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backbones)}
    fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 4), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        for (backbone, pooling), group in test[test.probe == probe].groupby(["backbone", "pooling"]):
            group = group.sort_values("block")
            style = "-o" if len(group) > 1 else "o"
            ax.errorbar(group.block, 100 * group.value,
                        # a percentile interval can exclude the point estimate (few resamples): clip
                        yerr=[100 * (group.value - group.ci_low).clip(lower=0),
                              100 * (group.ci_high - group.value).clip(lower=0)],
                        fmt=style, color=colours[backbone], label=f"{backbone} ({pooling})", capsize=3,
                        linestyle="--" if pooling == "mean" else "-")
        ax.set(title=f"{probe}: test top-1 per block", xlabel="block index", ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        with atomic_path(Path(out_png).with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=120)
    plt.close(fig)


def write_report(probe_jsons, out_dir: str | Path) -> pd.DataFrame:
    out_dir = Path(out_dir)
    table = build_table(probe_jsons)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_dir / "metrics.md") as tmp:
        tmp.write_text(render_markdown(table))
    plot_accuracy_per_block(table, out_dir / "plots" / "accuracy_per_block.png")
    return table
