"""Every figure of the report, drawn from the tidy table (plus predictions / features where needed).

One colour per backbone in every figure; one panel per dataset (and per probe family where it
matters). Each figure is written as PNG and SVG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .report import best_overall, headline_rows, one_setting_per_block, best_per_family

FEWSHOT = "fewshot"  # the agreed family name and setting format `shots=N`
MAX_MAP_POINTS = 2000
LINESTYLES = {"cls": "-", "flat": "-", "mean": "--", "tokens": ":"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "svg.fonttype": "none"})
    return plt


def backbone_colours(backbones) -> dict:
    cmap = _plt().get_cmap("tab10")
    return {b: cmap(i % 10) for i, b in enumerate(sorted(backbones))}


def save(fig, out_png: Path) -> None:
    for suffix in (".png", ".svg"):
        with atomic_path(out_png.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=110, bbox_inches="tight")
    _plt().close(fig)


def placeholder(out_png: Path, message: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    save(fig, out_png)


def _ci(rows: pd.DataFrame):
    low = (rows.value - rows.ci_low).fillna(0).clip(lower=0)
    high = (rows.ci_high - rows.value).fillna(0).clip(lower=0)
    return [100 * low, 100 * high]


def plot_accuracy_per_block(table: pd.DataFrame, colours: dict, out_png: Path) -> None:
    """The MIM-Refiner figure: test accuracy per block, a panel per dataset x probe family."""
    plt = _plt()
    rows = one_setting_per_block(table)
    panels = sorted(rows.groupby(["dataset", "probe"]).groups)
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (dataset, probe) in zip(axes.flat, panels):
        panel = rows[(rows.dataset == dataset) & (rows.probe == probe)]
        ticks = set()
        for (backbone, pooling), group in panel.groupby(["backbone", "pooling"]):
            group = group.sort_values("block")
            label = f"{backbone} ({pooling})"
            style = dict(color=colours[backbone], linestyle=LINESTYLES.get(pooling, "-"))
            if len(group) == 1 and panel.block.nunique() > 1:  # a one-block baseline: a level line
                ax.axhline(100 * group.value.iloc[0], label=label + " baseline", alpha=0.8, **style)
                continue
            ax.errorbar(group.block, 100 * group.value, yerr=_ci(group), fmt="o", capsize=2, ms=4,
                        label=label, **style)
            ticks.update(group.block)
        metric = panel.metric.iloc[0] if len(panel) else "top1"
        ax.set(title=f"{dataset} · {probe}", xlabel="block index", ylabel=f"test {metric} (%)")
        ax.set_xticks(sorted(ticks or set(panel.block)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Test accuracy per block (setting chosen on validation; bars: 95% CI)")
    fig.tight_layout()
    save(fig, out_png)


def plot_probe_comparison(table: pd.DataFrame, colours: dict, out_png: Path) -> None:
    """Best setting of each probe family per backbone, side by side with 95% CI bars."""
    plt = _plt()
    best = best_per_family(table)
    datasets = sorted(best.dataset.unique())
    probes = sorted(best.probe.unique())
    backbones = sorted(best.backbone.unique())
    width = 0.8 / max(1, len(backbones))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6, 1.6 * len(probes) * max(1, len(backbones) / 2)),
                                                        3.6 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        panel = best[best.dataset == dataset]
        for k, backbone in enumerate(backbones):
            rows = panel[panel.backbone == backbone].set_index("probe").reindex(probes)
            x = np.arange(len(probes)) + (k - (len(backbones) - 1) / 2) * width
            ax.bar(x, 100 * rows.value, width, yerr=_ci(rows), capsize=3, color=colours[backbone], label=backbone)
            for xi, v, top in zip(x, rows.value, rows.ci_high.fillna(rows.value)):
                if not pd.isna(v):
                    ax.text(xi, 100 * top + 1, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=7)
        metrics = panel.groupby("probe").metric.first().reindex(probes).fillna("")
        ax.set_xticks(np.arange(len(probes)), [f"{p}\n({m})" for p, m in zip(probes, metrics)])
        ax.set(title=f"{dataset}: best setting per probe (chosen on validation)", ylabel="test (%)", ylim=(0, 105))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncols=min(4, len(backbones)))
    fig.tight_layout()
    save(fig, out_png)


def plot_fewshot(table: pd.DataFrame, colours: dict, out_png: Path) -> bool:
    """Few-shot accuracy against images per class, deepest block; False (and no file) without rows."""
    rows = headline_rows(table)
    rows = rows[(rows.probe == FEWSHOT) & rows.setting.str.startswith("shots=")].copy()
    if rows.empty:
        return False
    plt = _plt()
    rows["shots"] = rows.setting.str.removeprefix("shots=").astype(int)
    rows = rows[rows.block == rows.groupby(["dataset", "backbone"]).block.transform("max")]
    datasets = sorted(rows.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (backbone, pooling, block), group in rows[rows.dataset == dataset].groupby(["backbone", "pooling", "block"]):
            group = group.sort_values("shots")
            style = dict(color=colours[backbone], linestyle=LINESTYLES.get(pooling, "-"))
            ax.plot(group.shots, 100 * group.value, marker="o", label=f"{backbone} (block {block} {pooling})", **style)
            if group.ci_low.notna().all():
                ax.fill_between(group.shots, 100 * group.ci_low, 100 * group.ci_high, alpha=0.15,
                                color=colours[backbone])
        ax.set_xscale("log", base=2)
        shots = sorted(rows.shots.unique())
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set(title=f"{dataset}: few-shot", xlabel="labelled images per class", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, out_png)
    return True


def _selected_record(payload: dict, choice) -> dict | None:
    for record in payload["results"]:
        if (record["block"], record["pooling"], record["setting"]) == (choice.block, choice.pooling, choice.setting):
            return record
    return None


def plot_training_curves(table: pd.DataFrame, payloads: list[dict], colours: dict, out_png: Path) -> None:
    """Per-epoch train/val loss and accuracy of the chosen head of every family that records them."""
    best = best_per_family(table).set_index(["dataset", "backbone", "probe"])
    curves: dict[tuple[str, str], list] = {}
    for payload in payloads:
        key = (payload["dataset"], payload["backbone"], payload["probe"])
        record = _selected_record(payload, best.loc[key]) if key in best.index else None
        if record and record.get("history"):
            curves.setdefault((payload["dataset"], payload["probe"]), []).append((payload["backbone"], record))
    if not curves:
        placeholder(out_png, "No probe in this run recorded per-epoch history (linear and mlp do).")
        return
    plt = _plt()
    fig, axes = plt.subplots(len(curves), 2, figsize=(9, 3.2 * len(curves)), squeeze=False)
    for row, ((dataset, probe), runs) in enumerate(sorted(curves.items())):
        loss_ax, acc_ax = axes[row]
        for backbone, record in sorted(runs, key=lambda r: r[0]):
            history = pd.DataFrame(record["history"])
            where = f"b{record['block']} {record['pooling']} {record['setting']}"
            for column, ax, scale in (("train_loss", loss_ax, 1), ("val_loss", loss_ax, 1),
                                      ("train_top1", acc_ax, 100), ("val_top1", acc_ax, 100)):
                if column in history and "epoch" in history:
                    ax.plot(history.epoch, scale * history[column], color=colours[backbone],
                            linestyle="-" if column.startswith("train") else "--",
                            label=f"{backbone} {column.split('_')[0]} ({where})")
        loss_ax.set(title=f"{dataset} · {probe}: loss", xlabel="epoch", ylabel="cross-entropy")
        acc_ax.set(title=f"{dataset} · {probe}: accuracy", xlabel="epoch", ylabel="top-1 (%)")
        for ax in (loss_ax, acc_ax):
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6)
    fig.suptitle("Training curves of the chosen heads (solid: train, dashed: validation)")
    fig.tight_layout()
    save(fig, out_png)


def most_confused(confusion: np.ndarray, names: list[str], top: int = 5) -> list[dict]:
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    support = confusion.sum(axis=1)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        true, pred = divmod(int(flat), confusion.shape[1])
        if off[true, pred] == 0:
            break
        pairs.append({"true": names[true], "predicted": names[pred], "count": int(off[true, pred]),
                      "share": float(off[true, pred] / max(support[true], 1))})
    return pairs


def _best_predictions(table: pd.DataFrame, jsons: dict[tuple, Path], dataset: str):
    """Labels, probabilities and description of the dataset's best validated probe that saved predictions."""
    candidates = best_overall(table)
    for row in candidates[candidates.dataset == dataset].itertuples():
        path = jsons.get((row.dataset, row.backbone, row.probe))
        npz = path.with_suffix(".predictions.npz") if path else None
        key = f"b{row.block:03d}__{row.pooling}__{row.setting}"  # as probes.common saves them
        if npz and npz.is_file():
            with np.load(npz) as data:
                if key in data:
                    return row, data["labels"], data[key]
    return None


def plot_confusion(table: pd.DataFrame, jsons: dict[tuple, Path], class_names: dict, out_png: Path) -> dict:
    """Row-normalised confusion matrix of each dataset's best probe; returns the most-confused pairs."""
    from .metrics import confusion_matrix

    found = {d: _best_predictions(table, jsons, d) for d in sorted(table.dataset.unique())}
    found = {d: f for d, f in found.items() if f is not None}
    if not found:
        placeholder(out_png, "No validated probe saved test predictions.")
        return {}
    plt = _plt()
    fig, axes = plt.subplots(1, len(found), figsize=(6.5 * len(found), 6.2), squeeze=False)
    confused = {}
    for ax, (dataset, (row, labels, probs)) in zip(axes[0], found.items()):
        names = class_names[dataset]
        counts = confusion_matrix(labels, probs.argmax(1), len(names))
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
        fig.colorbar(image, ax=ax, fraction=0.046, label="% of the true class")
        if len(names) <= 30:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
        title = f"{row.backbone} · {row.probe} · block {row.block} {row.pooling} · {row.setting}"
        pairs = most_confused(counts, names)
        confused[dataset] = {"title": title, "pairs": pairs}
        listing = "\n".join(f"{p['true']} → {p['predicted']}: {p['count']} ({100 * p['share']:.0f}%)" for p in pairs)
        ax.set(title=f"{dataset}: {title}\ntest top-1 {100 * row.value:.1f}%", xlabel="predicted class",
               ylabel="true class")
        ax.text(1.35, 0.5, "Most confused\n(true → predicted)\n\n" + (listing or "none"),
                transform=ax.transAxes, va="center", fontsize=8)
    fig.tight_layout()
    save(fig, out_png)
    return confused


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, float]:
    centred = features - features.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = float((singular[:2] ** 2).sum() / max((singular ** 2).sum(), 1e-12))
    return centred @ vt[:2].T, explained


def plot_feature_map(table: pd.DataFrame, embeddings: Path, class_names: dict, out_png: Path, seed: int = 0) -> None:
    """PCA of the best (backbone, block, pooling)'s test features per dataset, coloured by class."""
    from .store import open_store, read_features

    best = best_overall(table).groupby("dataset").head(1)
    panels = []
    for row in best.itertuples():
        store = embeddings / row.backbone / f"{row.dataset}.zarr"
        if (store / "zarr.json").is_file():
            panels.append((row, store))
    if not panels:
        placeholder(out_png, f"No feature store found under {embeddings} for the best probes.")
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    for ax, (row, store) in zip(axes[0], panels):
        root = open_store(store)
        labels = np.asarray(root["test/labels"][:])
        rows = np.arange(len(labels))
        if len(rows) > MAX_MAP_POINTS:
            rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_MAP_POINTS, replace=False))
        features = read_features(root, "test", row.pooling, row.block, rows)
        if features.ndim == 3:  # a token grid (attentive probe): map the mean token
            features = features.mean(1)
        points, explained = pca_2d(features)
        names = class_names[row.dataset]
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "turbo")
        colour = labels[rows] / max(1, len(names) - 1) if len(names) > 20 else labels[rows] % cmap.N
        ax.scatter(points[:, 0], points[:, 1], c=cmap(colour), s=8, alpha=0.8, linewidths=0)
        if len(names) <= 20:
            for c, name in enumerate(names):
                ax.scatter([], [], color=cmap(c % cmap.N), label=name, s=20)
            ax.legend(fontsize=7, markerscale=1, ncols=2 if len(names) > 10 else 1, loc="center left",
                      bbox_to_anchor=(1.0, 0.5), title="class")
        ax.set(title=f"{row.dataset}: {row.backbone} block {row.block} {row.pooling} test features\n"
                     f"PCA, {100 * explained:.0f}% of variance in 2 components",
               xlabel="PC 1", ylabel="PC 2")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save(fig, out_png)


def draw_all(table: pd.DataFrame, probe_jsons: list[Path], embeddings: Path, plots_dir: Path) -> dict:
    """Every figure into plots_dir; returns the most-confused class pairs per dataset for metrics.md."""
    payloads = [json.loads(p.read_text()) for p in probe_jsons]
    jsons = {(p["dataset"], p["backbone"], p["probe"]): path for p, path in zip(payloads, probe_jsons)}
    class_names = {p["dataset"]: p["class_names"] for p in payloads}
    colours = backbone_colours(table.backbone.unique())
    plot_accuracy_per_block(table, colours, plots_dir / "accuracy_per_block.png")
    plot_probe_comparison(table, colours, plots_dir / "probe_comparison.png")
    plot_fewshot(table, colours, plots_dir / "fewshot.png")
    plot_training_curves(table, payloads, colours, plots_dir / "training_curves.png")
    confused = plot_confusion(table, jsons, class_names, plots_dir / "confusion_matrix.png")
    plot_feature_map(table, embeddings, class_names, plots_dir / "feature_map.png")
    return confused
