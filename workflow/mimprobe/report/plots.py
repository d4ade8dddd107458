"""The accuracy figures, drawn from the tidy table: per relative depth, per probe, per shot count, per epoch.

One colour per backbone everywhere. The block axis is relative depth, (block index + 1) / blocks,
so a 6-block CNN and a 12-block ViT line up; each figure's subtitle names every backbone's blocks.
Baselines are marked by their kind (raw pixels: a level line; random init: hollow markers);
records that combine several blocks (the linear grid's cls+mean, cls4, cls4+mean) are starred
points right of the depth axis, never curves or baselines. Every accuracy axis has a chance line.
Figures are at most ~10 inches wide so their text stays legible at a browser page's width, and
split per probe or per dataset so each stays shorter than a browser window (Snakemake's report
centres an image vertically: the top of a taller one cannot be scrolled to).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..atomic import atomic_path
from .table import best_by_comparison, best_rows, comparison_order, per_block_rows

FEWSHOT = "fewshot"  # the agreed family name; its settings are `shots=N`
WIDTH = 9.6  # inches: the widest figure
LINESTYLES = {"cls": "-", "flat": "-", "mean": "--", "tokens": ":"}
COMBINED_STEP = 0.12  # x distance between starred combination records right of depth 1.0


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "svg.fonttype": "none"})
    return plt


def backbone_colours(backbones) -> dict:
    cmap = pyplot().get_cmap("tab10")
    return {b: cmap(i % 10) for i, b in enumerate(sorted(backbones))}


def save(fig, out_png) -> None:
    for suffix in (".png", ".svg"):
        with atomic_path(out_png.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def placeholder(out_png, message: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    save(fig, out_png)


def ci_error(rows: pd.DataFrame):
    low = (rows.value - rows.ci_low).fillna(0).clip(lower=0)
    high = (rows.ci_high - rows.value).fillna(0).clip(lower=0)
    return [100 * low.to_numpy(), 100 * high.to_numpy()]


def chance_line(ax, classes: int, vertical: bool = False) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(100 / classes, color="0.35", linestyle=":", linewidth=1.2, label=f"chance (1/{classes})", zorder=1)


def backbone_label(row) -> str:
    return f"{row.backbone} ({row.baseline})" if row.baseline else row.backbone


def block_summary(rows: pd.DataFrame) -> str:
    """'effnet_lite0: blocks 3, 4, 5 of 6 · pixels: block 0 of 1', for a figure's subtitle."""
    parts = []
    for backbone, group in rows.groupby("backbone", sort=True):
        blocks = sorted(set(group.block[group.combined_blocks == ""]))
        count = int(group.block_count.iloc[0])
        shown = ", ".join(map(str, blocks)) if len(blocks) <= 4 else f"{blocks[0]}-{blocks[-1]} ({len(blocks)})"
        parts.append(f"{backbone}: block{'s' if len(blocks) > 1 else ''} {shown} of {count}")
    return " · ".join(parts)


def figure_legend(fig, axes, ncols: int = 3) -> None:
    """One legend for the whole figure, below the panels (never over the data)."""
    seen = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=ncols, frameon=False)


def depth_panel(ax, rows: pd.DataFrame, colours: dict, classes: int) -> None:
    """Test accuracy against relative depth; baselines by kind; combination records starred at the right."""
    single, combined = rows[rows.combined_blocks == ""], rows[rows.combined_blocks != ""]
    for (backbone, pooling), group in single.groupby(["backbone", "pooling"], sort=True):
        group = group.sort_values("depth")
        first = group.iloc[0]
        style = {"color": colours[backbone], "linestyle": LINESTYLES.get(pooling, "-")}
        if first.baseline and group.block.nunique() == 1:  # raw pixels: no depth, a level
            ax.axhline(100 * first.value, label=f"{backbone} {pooling} ({first.baseline})", alpha=0.9, **style)
            continue
        hollow = {"markerfacecolor": "white"} if first.baseline else {}
        ax.errorbar(group.depth, 100 * group.value, yerr=ci_error(group), fmt="o", capsize=2, ms=4,
                    label=f"{backbone} {pooling}" + (f" ({first.baseline})" if first.baseline else ""),
                    **style, **hollow)
    depths = sorted({round(d, 2) for d in single.depth}) or [1.0]
    lo = min(depths[0], 1.0)
    ticks = depths if len(depths) <= 8 else [t for t in MaxNLocator(6).tick_values(lo, 1.0) if lo <= t <= 1]
    labels = [f"{t:.2f}" for t in ticks]
    poolings = sorted(combined.pooling.unique())
    if poolings:
        ax.axvline(1 + COMBINED_STEP / 2, color="0.7", linewidth=0.8)
        offsets = {b: (i - (combined.backbone.nunique() - 1) / 2) * 0.02
                   for i, b in enumerate(sorted(combined.backbone.unique()))}
        for row in combined.itertuples():
            x = 1 + COMBINED_STEP * (poolings.index(row.pooling) + 1) + offsets[row.backbone]
            ax.errorbar([x], [100 * row.value], yerr=ci_error(combined.loc[[row.Index]]), fmt="*", ms=9,
                        capsize=2, color=colours[row.backbone])
        ax.plot([], [], "*", color="0.3", ms=9, label="last blocks combined (right of the line)")
        ticks += [1 + COMBINED_STEP * (i + 1) for i in range(len(poolings))]
        labels += poolings
    ax.set_xticks(ticks, labels)
    for label in ax.get_xticklabels()[len(ticks) - len(poolings):]:
        label.set_rotation(40)
        label.set_horizontalalignment("right")
    span = 1 - lo
    ax.set_xlim(lo - max(0.05, 0.08 * span), 1 + COMBINED_STEP * (len(poolings) + 0.5) if poolings else 1.05)
    chance_line(ax, classes)
    ax.set(xlabel="relative depth (block + 1) / blocks")
    ax.grid(alpha=0.3)


def _panel_grid(count: int, height: float = 3.0):
    ncols = 2 if count > 1 else 1
    nrows = -(-count // ncols)
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(WIDTH if ncols == 2 else WIDTH * 0.6, height * nrows + 1.4),
                                  squeeze=False, layout="constrained")
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, axes


def plot_accuracy_per_block(table: pd.DataFrame, probe: str, classes: dict, colours: dict, out_png) -> None:
    """One probe family's test accuracy per relative depth, a panel per dataset x comparison (few-shot:
    a panel per shot count)."""
    rows = per_block_rows(table)
    rows = rows[rows.probe == probe]
    panels = [(d, c) for d in sorted(rows.dataset.unique())
              for c in comparison_order(rows[rows.dataset == d].comparison)]
    if not panels:
        placeholder(out_png, f"{probe}: no results (no stored array this probe reads).")
        return
    fig, axes = _panel_grid(len(panels))
    for ax, (dataset, label) in zip(axes.flat, panels):
        panel = rows[(rows.dataset == dataset) & (rows.comparison == label)]
        depth_panel(ax, panel, colours, classes[dataset])
        ax.set(title=f"{dataset} · {label}", ylabel=f"test {panel.metric.iloc[0]} (%)")
    figure_legend(fig, axes)
    fig.suptitle(f"{probe}: test accuracy per block (setting chosen on validation at each block; bars: 95% CI)\n"
                 + block_summary(rows), fontsize=9)
    save(fig, out_png)


def plot_probe_comparison(table: pd.DataFrame, dataset: str, classes: int, colours: dict, out_png) -> None:
    """One dataset: the selected record of each comparison per backbone, horizontal bars with 95% CI
    and the value printed."""
    best = best_rows(table)
    best = best[best.dataset == dataset]
    if best.empty:
        placeholder(out_png, f"{dataset}: no probe results.")
        return
    backbones, labels = sorted(best.backbone.unique()), comparison_order(best.comparison)
    bar = 0.17  # inches per bar: room for a 7-point value label
    fig, ax = pyplot().subplots(figsize=(WIDTH - 1.6, len(labels) * (bar * len(backbones) + 0.12) + 1.3),
                                layout="constrained")
    width = 0.84 / len(backbones)
    for k, backbone in enumerate(backbones):
        rows = best[best.backbone == backbone].set_index("comparison").reindex(labels)
        y = np.arange(len(labels)) + (k - (len(backbones) - 1) / 2) * width
        ax.barh(y, 100 * rows.value, width, xerr=ci_error(rows), capsize=2, color=colours[backbone],
                label=backbone_label(rows.dropna(subset=["value"]).iloc[0]), error_kw={"elinewidth": 0.8})
        for yi, value, high in zip(y, rows.value, rows.ci_high.fillna(rows.value)):
            if not pd.isna(value):
                ax.text(100 * high + 1, yi, f"{100 * value:.1f}", va="center", fontsize=7)
    metrics = best.groupby("comparison").metric.first().reindex(labels)
    ax.set_yticks(np.arange(len(labels)), [c if m == "top1" else f"{c} ({m})" for c, m in zip(labels, metrics)])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first comparison on top
    chance_line(ax, classes, vertical=True)
    ax.set(title=f"{dataset}: the block, pooling and setting each probe chose on validation",
           xlabel="test (%); bars: 95% CI", xlim=(0, 108))
    ax.grid(alpha=0.3, axis="x")
    figure_legend(fig, [ax], ncols=min(4, len(backbones) + 1))
    save(fig, out_png)


def plot_fewshot(table: pd.DataFrame, classes: dict, colours: dict, out_png) -> None:
    """Few-shot test top-1 against shots, each point's block and pooling chosen on validation at its
    shot count; a panel per dataset."""
    best = best_rows(table)
    best = best[(best.probe == FEWSHOT) & best.setting.str.startswith("shots=")]
    if best.empty:
        placeholder(out_png, "fewshot: no results.")
        return
    best = best.assign(shots=best.setting.str.removeprefix("shots=").astype(int))
    datasets = sorted(best.dataset.unique())
    fig, axes = _panel_grid(len(datasets), height=3.4)
    for ax, dataset in zip(axes.flat, datasets):
        rows = best[best.dataset == dataset]
        for backbone, group in rows.groupby("backbone", sort=True):
            group = group.sort_values("shots")
            ax.errorbar(group.shots, 100 * group.value, yerr=ci_error(group), marker="o", capsize=2,
                        color=colours[backbone], label=backbone_label(group.iloc[0]))
            for row in group.itertuples():
                ax.annotate(f"b{row.block} {row.pooling}", (row.shots, 100 * row.value), textcoords="offset points",
                            xytext=(4, -9), fontsize=6, color=colours[backbone])
        ax.set_xscale("log", base=2)
        shots = sorted(rows.shots.unique())
        ax.set_xticks(shots, [str(s) for s in shots])
        chance_line(ax, classes[dataset])
        ax.set(title=dataset, xlabel="labelled images per class", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
    figure_legend(fig, axes)
    fig.suptitle("Few-shot at equal shots: block and pooling chosen on validation at each shot count "
                 "(mean over seeded draws; bars: 95% CI)", fontsize=9)
    save(fig, out_png)


def plot_training_curves(payloads: list[dict], classes: dict, colours: dict, out_png) -> None:
    fig = training_curves_figure(payloads, classes, colours)
    if fig is None:
        placeholder(out_png, "No selected head recorded per-epoch history (linear, mlp and attentive do).")
    else:
        save(fig, out_png)


def training_curves_figure(payloads: list[dict], classes: dict, colours: dict):
    """Per-epoch loss (log scale) and accuracy of the selected head of every comparison with a
    history, a row per dataset x comparison; None when no record has a history."""
    curves: dict[tuple[str, str], list] = {}
    for payload in payloads:
        for label, record in best_by_comparison(payload["probe"], payload["results"]).items():
            if record.get("history"):
                curves.setdefault((payload["dataset"], label), []).append((payload["backbone"], record))
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(curves), 2, figsize=(WIDTH, 2.6 * len(curves) + 0.6), squeeze=False,
                             layout="constrained")
    for (loss_ax, acc_ax), ((dataset, label), runs) in zip(axes, sorted(curves.items())):
        for backbone, record in sorted(runs, key=lambda r: r[0]):
            history = pd.DataFrame(record["history"])
            where = f"b{record['block']} {record['pooling']} {record['setting']}"
            for column, ax, scale in (("train_loss", loss_ax, 1), ("val_loss", loss_ax, 1),
                                      ("train_top1", acc_ax, 100), ("val_top1", acc_ax, 100)):
                if column in history and "epoch" in history:
                    ax.plot(history.epoch, scale * history[column], color=colours[backbone],
                            linestyle="-" if column.startswith("train") else "--")
            acc_ax.plot([], [], color=colours[backbone], label=f"{backbone}\n{where}")
        chance_line(acc_ax, classes[dataset])
        acc_ax.plot([], [], color="black", label="train")
        acc_ax.plot([], [], color="black", linestyle="--", label="validation")
        loss_ax.set_yscale("log")
        loss_ax.set(title=f"{dataset} · {label}: loss", xlabel="epoch", ylabel="cross-entropy (log scale)")
        acc_ax.set(title=f"{dataset} · {label}: accuracy", xlabel="epoch", ylabel="top-1 (%)")
        acc_ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
        for ax in (loss_ax, acc_ax):
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3, which="both" if ax is loss_ax else "major")
    fig.suptitle("Training curves of the selected heads (solid: train, dashed: validation)", fontsize=10)
    return fig
