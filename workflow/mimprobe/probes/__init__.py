"""Probe families: each module has `fit(splits, params, seed) -> ProbeOutcome`; defaults live in the schema."""

from __future__ import annotations

import importlib

FAMILIES = ("knn", "linear", "logreg", "mlp", "svm", "fewshot", "kmeans", "attentive")


def family_module(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown probe family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def enabled_families(config: dict, backbone: str | None = None) -> list[str]:
    """Families switched on in a validated config for one backbone (default: for any backbone);
    attentive only where token grids are stored (a backbone's own `features` may store them)."""
    from ..config import backbone_features

    names = [backbone] if backbone else list(config["backbones"])
    tokens = any("tokens" in backbone_features(config, name)["pooling"] for name in names)
    return [f for f in FAMILIES if config["probes"].get(f, {}).get("enabled", True)
            and (f != "attentive" or tokens)]
