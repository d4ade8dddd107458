"""`mimprobe predict`: classify new images with a backbone and the saved head of a finished run.

The image is prepared exactly as sharding prepares an image folder (RGB, shorter side resized,
centre crop to the dataset's image size), then goes through the backbone's own preprocessing,
the stored block and pooling, the same fp16 rounding as the store, and the probe's head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import layout
from .datasets.imagefolder import open_image, to_square_uint8
from .errors import DataError, MimprobeError
from .layout import heads_path as heads_path_of
from .layout import probe_json, record_key, store_path
from .report.table import best_by_comparison

TOP_K = 5


@dataclass
class Run:
    """One finished probe job: where its files are and what it recorded."""

    results: Path
    backbone: str
    dataset: str
    probe: str
    payload: dict
    meta: dict

    @property
    def probe_json(self) -> Path:
        return Path(probe_json(self.backbone, self.dataset, self.probe, self.results))

    @property
    def store(self) -> Path:
        return Path(store_path(self.backbone, self.dataset, self.results / "embeddings"))


def _names(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in folder.glob(pattern)) if folder.is_dir() else []


def find_run(results: str | Path, backbone: str, probe: str, dataset: str | None = None) -> Run:
    """Locate the finished probe job, or say exactly which choices exist."""
    results = Path(results)
    probes_dir = layout.probes_dir(results)
    backbones = [p.name for p in sorted(probes_dir.glob("*")) if p.is_dir()]
    if backbone not in backbones:
        found = ", ".join(backbones) or "none"
        raise DataError(f"no finished run for backbone {backbone!r} under {probes_dir} (found: {found}). "
                        "Run the workflow (snakemake) first, or pass --backbone with one of those.")
    datasets = [p.name for p in sorted((probes_dir / backbone).iterdir()) if p.is_dir()]
    if dataset is None:
        if len(datasets) != 1:
            raise DataError(f"backbone {backbone!r} was probed on several datasets ({', '.join(datasets)}); "
                            "pass --dataset with one of them.")
        dataset = datasets[0]
    elif dataset not in datasets:
        raise DataError(f"no run of backbone {backbone!r} on dataset {dataset!r} under {probes_dir} "
                        f"(found: {', '.join(datasets) or 'none'}). Pass --dataset with one of those.")
    folder = probes_dir / backbone / dataset
    probes = [n for n in _names(folder, "*.json")]
    if probe not in probes:
        raise DataError(f"no finished {probe!r} probe for {backbone}/{dataset} in {folder} (found: "
                        f"{', '.join(probes) or 'none'}). Enable it in the config and rerun, or pass --probe "
                        "with one of those.")
    meta_path = Path(layout.meta_path(dataset, results))
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing, so class names are unknown. Rerun the workflow to rebuild it.")
    payload = json.loads((folder / f"{probe}.json").read_text())
    return Run(results, backbone, dataset, probe, payload, json.loads(meta_path.read_text()))


def choose_record(run: Run, block: int | None, pooling: str | None) -> dict:
    """The record the report selects among those at the requested block/pooling (`select_best`);
    for a family compared per shot count, the one at the most shots."""
    if not run.payload["results"]:
        raise DataError(f"{run.probe_json}: the {run.probe} probe has no results (no stored array it reads). "
                        "Pass --probe with another family.")
    records = [r for r in run.payload["results"]
               if (block is None or r["block"] == block) and (pooling is None or r["pooling"] == pooling)]
    if not records:
        available = ", ".join(f"--block {r['block']} --pooling {r['pooling']}" for r in run.payload["results"])
        wanted = " ".join(f"--{k} {v}" for k, v in (("block", block), ("pooling", pooling)) if v is not None)
        raise DataError(f"{run.probe_json}: no result for {wanted}. "
                        f"Available: {available}.")
    return list(best_by_comparison(run.probe, records).values())[-1]


def embed_images(run: Run, images: np.ndarray, arrays: list[tuple[int, str]], config_path: str | None) -> np.ndarray:
    """Features of (N, H, W, 3) uint8 images from the run's backbone: the (block, pooling) arrays
    concatenated in order, each rounded to fp16 like the store."""
    from .backbones import create_backbone
    from .store import open_store

    attrs = dict(open_store(run.store).attrs)
    recorded = attrs.get("backbone", {"model": attrs["model"]})  # the model and weights the run embedded with
    if config_path:
        from .config import load_config

        entry = load_config(config_path)["backbones"].get(run.backbone)
        if entry is None:
            raise DataError(f"{config_path}: has no backbone {run.backbone!r}. Pass the config that names it, "
                            "or omit --config to use what the run recorded.")
        recorded = entry
    backbone = create_backbone(recorded["model"], recorded.get("weights"), attrs.get("final_norm", False),
                               run.payload["seed"])
    blocks, poolings = sorted({b for b, _ in arrays}), sorted({p for _, p in arrays})
    with torch.inference_mode():
        features = backbone.forward_blocks(backbone.preprocess(torch.from_numpy(images)), blocks, poolings)
    parts = [features[key].float().numpy().astype(np.float16).astype(np.float32) for key in arrays]
    return np.concatenate(parts, axis=1)


def load_head(run: Run, record: dict) -> dict:
    """The fitted head of a record (key `bNNN/pooling/setting`); kNN keeps none."""
    heads_path = heads_path_of(run.probe_json)
    if not heads_path.is_file():
        raise DataError(f"{heads_path}: missing. Rerun the workflow to refit the {run.probe} probe.")
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    head = heads.get(record_key(record["block"], record["pooling"], record["setting"]))
    if not head or not {"weight", "bias"} <= set(head):
        raise MimprobeError(f"probe {run.probe!r} saved no linear head in {heads_path}, so predict cannot "
                            "use it yet. Use --probe linear or --probe knn.")
    return head


def head_arrays(record: dict, head: dict | None) -> list[tuple[int, str]]:
    """The stored arrays a head reads: several for the linear grid's concatenations, else one."""
    if head is not None and "blocks" in head:
        return list(zip(head["blocks"], head["poolings"]))
    return [(record["block"], record["pooling"])]


def linear_probabilities(head: dict, features: np.ndarray) -> np.ndarray:
    """A linear head: optional standardisation (BatchNorm statistics or mean/std), then W x + b."""
    x = torch.from_numpy(features)
    if "norm_mean" in head:
        x = (x - head["norm_mean"]) / torch.sqrt(head["norm_var"] + 1e-5)  # BatchNorm1d eval, eps 1e-5
    elif "mean" in head and "std" in head:
        x = (x - head["mean"]) / head["std"]
    return (x @ head["weight"].float().T + head["bias"].float()).softmax(-1).numpy()


def knn_probabilities_from_store(run: Run, record: dict, features: np.ndarray) -> np.ndarray:
    """kNN keeps no head: re-read the train features it voted with from the store."""
    from .config import probe_params
    from .probes.knn import knn_probabilities
    from .store import open_store, read_features

    root = open_store(run.store)
    bank = read_features(root, "train", record["pooling"], record["block"])
    labels = np.asarray(root["train/labels"][:])
    params = probe_params("knn", run.payload.get("params", {})) | record["chosen"]
    k = int(params["k"])
    return knn_probabilities(bank, labels, features, [k], len(run.meta["class_names"]),
                             params["temperature"], params["standardize"])[k]


def probabilities(run: Run, record: dict, head: dict | None, features: np.ndarray) -> np.ndarray:
    if run.probe == "knn":
        return knn_probabilities_from_store(run, record, features)
    return linear_probabilities(head, features)


def predict(paths: list[str], backbone: str, probe: str, results="results", block=None, pooling=None,
            dataset=None, config_path=None) -> list[dict]:
    opened = [open_image(path) for path in paths]  # a bad image fails before anything heavy loads
    run = find_run(results, backbone, probe, dataset)
    record = choose_record(run, block, pooling)
    size = int(run.meta["image_shape"][0])
    images = np.stack([to_square_uint8(image, size) for image in opened])
    head = None if probe == "knn" else load_head(run, record)
    features = embed_images(run, images, head_arrays(record, head), config_path)
    probs = probabilities(run, record, head, features)
    names = run.meta["class_names"]
    out = []
    for path, row in zip(paths, probs):
        top = np.argsort(-row, kind="stable")[:TOP_K]
        out.append({"image": str(path), "backbone": backbone, "dataset": run.dataset, "probe": probe,
                    "block": record["block"], "pooling": record["pooling"], "setting": record["setting"],
                    "top5": [{"class": names[i], "probability": round(float(row[i]), 6)} for i in top]})
    return out


def format_predictions(predictions: list[dict]) -> str:
    lines = []
    for p in predictions:
        lines.append(f"{p['image']}  ({p['backbone']}, {p['probe']} {p['setting']}, block {p['block']} "
                     f"{p['pooling']}, classes of {p['dataset']})")
        width = max(len(t["class"]) for t in p["top5"])
        for rank, t in enumerate(p["top5"], 1):
            lines.append(f"  {rank}. {t['class']:<{width}}  {100 * t['probability']:5.1f}%")
    return "\n".join(lines)
