"""Figures of one selected probe per dataset: its confusion matrix and a t-SNE map of its features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..layout import prediction_key, predictions_path, store_path
from .plots import WIDTH, placeholder, pyplot, save
from .table import best_overall

MAX_MAP_POINTS = 2000  # a seeded sample of the test split keeps t-SNE to seconds
PCA_DIMS = 50
NEIGHBOURS = 10  # for trustworthiness


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
    """Labels, probabilities and row of the dataset's best validated probe that saved predictions."""
    candidates = best_overall(table)
    for row in candidates[candidates.dataset == dataset].itertuples():
        path = jsons.get((row.dataset, row.backbone, row.probe))
        npz = predictions_path(path) if path else None
        key = prediction_key(row.block, row.pooling, row.setting)
        if npz and npz.is_file():
            with np.load(npz) as data:
                if key in data:
                    return row, data["labels"], data[key]
    return None


def selected_title(row) -> str:
    return f"{row.backbone} · {row.probe} · block {row.block} {row.pooling} · {row.setting}"


def plot_confusion(table: pd.DataFrame, dataset: str, jsons: dict[tuple, Path], names: list[str],
                   out_png) -> dict | None:
    """Row-normalised test confusion matrix of the dataset's best probe; returns its most-confused pairs."""
    from ..metrics import confusion_matrix

    found = _best_predictions(table, jsons, dataset)
    if found is None:
        placeholder(out_png, f"{dataset}: no validated probe saved test predictions.")
        return None
    row, labels, probs = found
    counts = confusion_matrix(labels, probs.argmax(1), len(names))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, (ax, side) = pyplot().subplots(1, 2, figsize=(WIDTH - 1.0, 6.2), layout="constrained",
                                        gridspec_kw={"width_ratios": [4, 1.2]})
    image = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of the true class")
    if len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    pairs = most_confused(counts, names)
    listing = "\n".join(f"{p['true']} → {p['predicted']}: {p['count']} ({100 * p['share']:.0f}%)" for p in pairs)
    ax.set(title=f"{dataset}: {selected_title(row)}\ntest top-1 {100 * row.value:.1f}%",
           xlabel="predicted class", ylabel="true class")
    side.axis("off")
    side.text(0.0, 0.5, "Most confused\n(true → predicted)\n\n" + (listing or "none"), va="center", fontsize=8)
    save(fig, out_png)
    return {"title": selected_title(row), "pairs": pairs}


def tsne_map(features: np.ndarray, seed: int) -> tuple[np.ndarray, float, int]:
    """A 2-D t-SNE of the features (PCA to 50 dims first) and its trustworthiness in the original
    space (with the neighbour count it used)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE, trustworthiness
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float32)
    # one thread: the report job holds one core, and t-SNE's OpenMP threads contending for busy
    # cores ran 8x slower (20 s against 2.3 s for 500 images on 2 loaded cores)
    with threadpool_limits(1):
        reduced = features
        if features.shape[1] > PCA_DIMS and len(features) > PCA_DIMS:
            reduced = PCA(PCA_DIMS, random_state=seed).fit_transform(features)
        perplexity = min(30.0, (len(features) - 1) / 3)
        points = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=500,
                      random_state=seed).fit_transform(reduced)
        neighbours = max(1, min(NEIGHBOURS, len(features) // 2 - 1))
        return points, float(trustworthiness(features, points, n_neighbors=neighbours)), neighbours


def plot_feature_map(table: pd.DataFrame, dataset: str, embeddings: Path, names: list[str], out_png,
                     seed: int = 0) -> None:
    """t-SNE of the test features behind the dataset's best probe, coloured by class."""
    from ..store import open_store, read_features

    best = best_overall(table)
    found = None
    for row in best[best.dataset == dataset].itertuples():  # a combination of arrays has no single feature space
        store = Path(store_path(row.backbone, row.dataset, embeddings))
        if row.combined_blocks == "" and (store / "zarr.json").is_file():
            found = row, store
            break
    if found is None:
        placeholder(out_png, f"{dataset}: no feature store under {embeddings} holds the best probes' features.")
        return
    row, store = found
    root = open_store(store)
    labels = np.asarray(root["test/labels"][:])
    rows = np.arange(len(labels))
    if len(rows) > MAX_MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_MAP_POINTS, replace=False))
    features = read_features(root, "test", row.pooling, row.block, rows)
    if features.ndim == 3:  # a token grid (attentive probe): map the mean token
        features = features.mean(1)
    points, trust, neighbours = tsne_map(features, seed)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH - 1.6, 6.4), layout="constrained")
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "turbo")
    colour = labels[rows] / max(1, len(names) - 1) if len(names) > 20 else labels[rows] % cmap.N
    ax.scatter(points[:, 0], points[:, 1], c=cmap(colour), s=16 if len(rows) <= 1000 else 7, alpha=0.8, linewidths=0)
    if len(names) <= 20:
        for c, name in enumerate(names):
            ax.scatter([], [], color=cmap(c % cmap.N), label=name, s=20)
        ax.legend(fontsize=7, ncols=2 if len(names) > 10 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  title="class", frameon=False)
    ax.set(title=f"{dataset}: {row.backbone} block {row.block} {row.pooling}, {len(rows)} test images\n"
                 f"t-SNE of PCA-{min(PCA_DIMS, features.shape[1])}; trustworthiness "
                 f"{trust:.2f} ({neighbours} neighbours; 1.00: map neighbours are true neighbours)")
    ax.set_xticks([])
    ax.set_yticks([])
    save(fig, out_png)
