"""Baselines that need no trained network: raw pixels."""

from __future__ import annotations

from .base import Backbone
from .source import Source


class Pixels(Backbone):
    """The raw 32x32 RGB image, normalised and flattened: the floor every backbone must beat."""

    input_size = 32
    interpolation = "bilinear"
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    block_names = ["pixels"]
    poolings = ("flat",)

    def _block_outputs(self, x, indices):
        return {0: {"flat": x.flatten(1)}}


PIXELS = Source(lambda name, weights, final_norm, seed: Pixels(), layout=lambda name: Pixels(), needs_name=False,
                own_blocks_only=True)
