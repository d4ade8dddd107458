"""Probe families: each module has `DEFAULTS` and `fit(splits, params, seed) -> ProbeOutcome`."""

from __future__ import annotations

import importlib

FAMILIES = ("knn", "linear", "logreg", "mlp", "svm", "fewshot", "kmeans", "attentive")


def family_module(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown probe family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def enabled_families(config: dict) -> list[str]:
    """Families switched on in a validated config; attentive only where token grids are stored."""
    return [f for f in FAMILIES if config["probes"].get(f, {}).get("enabled", True)
            and (f != "attentive" or "tokens" in config["features"]["pooling"])]
