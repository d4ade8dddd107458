"""`synthetic:<timm arch>`: a real architecture's output shapes at almost no cost, for rehearsals.

The blocks, feature width and token grid are those of the timm architecture (built on the meta
device: no weights, no memory). The features are a fixed, seeded function of the image alone, never
of its label: an 8x8 average-pooled copy of the image, randomly projected to the feature width, then
a per-block, per-pooling affine map and tanh. Probes therefore have something real to learn and
nothing leaks, while an image costs a few hundred thousand multiply-adds instead of a ViT's billions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Backbone
from .source import Source
from .timm_models import check_timm_arch, meta_layout

POOLED_SIDE = 8


def architecture_shape(arch: str) -> tuple[int, int, int]:
    """(blocks, feature width, patch tokens) of a timm ViT architecture, without building its weights."""
    import timm

    from ..errors import ConfigError

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    if not hasattr(model, "blocks"):
        raise ConfigError(f"synthetic:{arch}: use a ViT architecture (one with transformer blocks).")
    return len(model.blocks), model.num_features, model.patch_embed.num_patches


class Synthetic(Backbone):
    poolings = ("cls", "mean", "tokens")

    def __init__(self, arch: str, seed: int = 0):
        super().__init__()
        depth, dim, tokens = architecture_shape(arch)
        self.block_names = [f"blocks.{i}" for i in range(depth)]
        self.token_side = math.isqrt(tokens)
        generator = torch.Generator().manual_seed(seed)

        def draw(*shape, scale=1.0):
            return torch.nn.Parameter(torch.randn(*shape, generator=generator) * scale, requires_grad=False)

        inputs = 3 * POOLED_SIDE * POOLED_SIDE
        self.projection = draw(inputs, dim, scale=inputs ** -0.5)
        self.token_projection = draw(3, dim)
        self.gain = draw(depth, 2, dim, scale=0.5)  # per block: cls and mean
        self.shift = draw(depth, 2, dim, scale=0.1)

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Normalised at the image's own size: no resize, which would cost more than the features."""
        return images_uint8.permute(0, 3, 1, 2).float().mul_(1 / 63.75).sub_(2.0)

    @torch.no_grad()
    def forward_blocks(self, x, indices, poolings):
        """Only the poolings asked for: a token grid costs far more than the pooled vectors."""
        x = x.float()
        base = F.adaptive_avg_pool2d(x, POOLED_SIDE).flatten(1) @ self.projection.float()
        grid = F.adaptive_avg_pool2d(x, self.token_side).flatten(2).transpose(1, 2) if "tokens" in poolings else None
        outputs = {}
        for i in indices:
            pooled = torch.tanh(base[:, None] * self.gain[i].float() + self.shift[i].float())
            outputs |= {(i, "cls"): pooled[:, 0], (i, "mean"): pooled[:, 1]}
            if grid is not None:
                outputs[(i, "tokens")] = torch.tanh(grid @ self.token_projection.float() * (1 + i))
        return {key: value for key, value in outputs.items() if key[1] in poolings}


SYNTHETIC = Source(lambda name, weights, final_norm, seed: Synthetic(name, seed), check_timm_arch, meta_layout)
