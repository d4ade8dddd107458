"""One registry and one factory for every backbone kind (`create_backbone(spec)`, like timm's).

A kind is one module that defines a `Source` (how to build it, what to check before any job runs)
and one line in SOURCES below.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import baselines, effnet, hub_models, mim_refiner, synthetic, timm_models
from .base import Backbone
from .source import Source

SOURCES: dict[str, Source] = {
    "effnet_lite0": effnet.EFFNET_LITE0,
    "pixels": baselines.PIXELS,
    "random": timm_models.RANDOM,
    "synthetic": synthetic.SYNTHETIC,
    "timm": timm_models.PRETRAINED,
    "torchvision": hub_models.TORCHVISION,
    "torchhub": hub_models.TORCHHUB,
    "mim_refiner": mim_refiner.MIM_REFINER,
}


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    return kind, arg


def source_of(spec: str) -> tuple[Source, str]:
    """The registered source of a model spec and the name after its `kind:`, or a ConfigError."""
    kind, name = parse_spec(spec)
    if kind not in SOURCES:
        raise ConfigError(f"unknown backbone kind {kind!r} in {spec!r}; use one of {', '.join(SOURCES)}")
    source = SOURCES[kind]
    if source.needs_name and not name:
        raise ConfigError(f"{spec!r} needs a model name after '{kind}:'")
    return source, name


def check_model_spec(spec: str) -> None:
    """Reject a malformed model spec before any job runs."""
    source, name = source_of(spec)
    try:
        source.check(name)
    except ConfigError as err:
        raise ConfigError(f"{spec}: {err}") from None


def block_layout(spec: str) -> Backbone | None:
    """The backbone's blocks without weights or memory, or None where only loading tells."""
    source, name = source_of(spec)
    return source.layout(name)


def create_backbone(spec: str, weights: str | None = None, final_norm: bool = False, seed: int = 0) -> Backbone:
    """Build the frozen backbone named by `spec` on the CPU, in eval mode."""
    check_model_spec(spec)
    source, name = source_of(spec)
    return source.build(name, weights, final_norm, seed)


__all__ = ["SOURCES", "Backbone", "Source", "block_layout", "check_model_spec", "create_backbone",
           "parse_spec", "source_of"]
