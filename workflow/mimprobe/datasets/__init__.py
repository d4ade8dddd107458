"""Dataset kinds: one registry of how each kind is read and planned.

A kind is one module that defines a `Kind` (its loader, its split sizes before any job runs, the
config keys it reads) and one line in KINDS below. Every loader returns a `RawDataset` of uint8
NHWC images; `shards.py` cuts it into shards.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import cifar, digits, imagefolder
from .base import Kind, RawDataset, SplitArrays

KINDS: dict[str, Kind] = {
    "cifar100": cifar.CIFAR100,
    "cifar10": cifar.CIFAR10,
    "digits": digits.DIGITS,
    "imagefolder": imagefolder.IMAGEFOLDER,
}


def kind_of(entry: dict) -> Kind:
    if entry["kind"] not in KINDS:
        raise ConfigError(f"unknown dataset kind {entry['kind']!r}; use one of {', '.join(KINDS)}")
    return KINDS[entry["kind"]]


def schema_keys() -> dict[str, dict]:
    """Every kind's own config keys (JSON-schema properties), with the kinds that read each."""
    keys: dict[str, dict] = {}
    for name, kind in KINDS.items():
        for key, spec in kind.schema.items():
            keys.setdefault(key, {"schema": spec, "kinds": []})["kinds"].append(name)
    return keys


__all__ = ["KINDS", "Kind", "RawDataset", "SplitArrays", "kind_of", "schema_keys"]
