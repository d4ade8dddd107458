"""timm models behind the Backbone interface, using timm's own `forward_intermediates`."""

from __future__ import annotations

import torch

from .base import Backbone, pool_feature_map, pool_tokens
from .source import Source


def _input_geometry(backbone: Backbone, model) -> None:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    backbone.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    backbone.interpolation = cfg.get("interpolation", "bicubic")
    backbone.mean = tuple(cfg.get("mean", backbone.mean))
    backbone.std = tuple(cfg.get("std", backbone.std))


class TimmViT(Backbone):
    """Any timm model with transformer `blocks` and prefix (CLS) tokens."""

    poolings = ("cls", "mean", "tokens")

    def __init__(self, model, final_norm: bool = False):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.final_norm = final_norm
        self.block_names = [f"blocks.{i}" for i in range(len(model.blocks))]
        _input_geometry(self, model)

    def _block_outputs(self, x, indices):
        outs = self.model.forward_intermediates(
            x, indices=indices, norm=self.final_norm, stop_early=True, output_fmt="NLC",
            intermediates_only=True, return_prefix_tokens=True,
        )
        return {i: pool_tokens(prefix, patches) for i, (patches, prefix) in zip(indices, outs)}


class TimmCNN(Backbone):
    """A timm CNN: its feature stages, plus the globally pooled pre-logits as the last block."""

    poolings = ("mean", "tokens")

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        stages = [f"stage.{info['module']}" for info in model.feature_info]
        self.block_names = stages + ["pre_logits"]
        _input_geometry(self, model)

    def _block_outputs(self, x, indices):
        stage_count = len(self.block_names) - 1
        wanted_stages = [i for i in indices if i < stage_count]
        outputs = {}
        if stage_count - 1 in indices or stage_count in indices:
            # The head needs the final features anyway: one full pass serves every stage.
            final, stages = self.model.forward_intermediates(x, indices=wanted_stages or [0])
            if stage_count in indices:
                pre_logits = self.model.forward_head(final, pre_logits=True)
                outputs[stage_count] = {"mean": pre_logits}
        else:
            stages = self.model.forward_intermediates(
                x, indices=wanted_stages, stop_early=True, intermediates_only=True
            )
        for i, fmap in zip(wanted_stages, stages):
            outputs[i] = pool_feature_map(fmap)
        return outputs


def wrap_timm_model(model, final_norm: bool = False) -> Backbone:
    if hasattr(model, "blocks") and getattr(model, "num_prefix_tokens", None) is not None:
        return TimmViT(model, final_norm=final_norm)
    if hasattr(model, "feature_info"):
        return TimmCNN(model)
    raise ValueError(f"timm model {type(model).__name__} exposes neither ViT blocks nor CNN stages")


def seeded_random_model(arch: str, seed: int):
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False)


def check_timm_arch(name: str) -> None:
    import timm

    from ..errors import ConfigError

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"timm has no architecture {name.split('.')[0]!r}; see timm.list_models()")


def meta_layout(name: str) -> Backbone | None:
    """The architecture built on PyTorch's meta device: its blocks without weights or memory."""
    import timm

    try:
        with torch.device("meta"):
            return wrap_timm_model(timm.create_model(name.split(".")[0], pretrained=False))
    except Exception:
        return None


def create_timm_pretrained(name: str, weights: str | None = None):
    """timm's pretrained model; a local `weights` file goes through timm's own (weights-only) loader,
    whose failures become one line naming the file."""
    import timm

    if not weights:
        return timm.create_model(name, pretrained=True)
    from ..errors import MimprobeError
    from .weights import load_failure, require_file

    source = f"timm:{name}"
    require_file(weights, source)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights})
    except Exception as err:
        raise MimprobeError(load_failure(weights, source, err)) from None


RANDOM = Source(lambda name, weights, final_norm, seed: wrap_timm_model(seeded_random_model(name, seed), final_norm),
                check_timm_arch, meta_layout)
PRETRAINED = Source(lambda name, weights, final_norm, seed: wrap_timm_model(create_timm_pretrained(name, weights),
                                                                            final_norm),
                    check_timm_arch, meta_layout)
