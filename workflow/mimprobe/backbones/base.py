"""The common backbone interface: preprocessing on the device and pooled features per block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Backbone(nn.Module):
    """A frozen feature extractor exposing numbered blocks.

    Subclasses set `block_names`, `poolings` (which pooling names they support), the input
    geometry and `_block_outputs(x, indices)` returning {index: raw block output}.
    """

    input_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    block_names: list[str] = []
    poolings: tuple[str, ...] = ("cls", "mean", "tokens")

    def resolve_blocks(self, blocks) -> list[int]:
        """Turn 'all' or a list of (possibly negative) indices into sorted absolute indices."""
        count = len(self.block_names)
        if blocks == "all":
            return list(range(count))
        resolved = set()
        for index in blocks:
            if not -count <= index < count:
                raise IndexError(
                    f"block index {index} is out of range: this backbone has {count} blocks "
                    f"(valid: {-count}..{count - 1})"
                )
            resolved.add(index % count)
        return sorted(resolved)

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device -> normalised (B, 3, S, S) float32 (channels-last memory).

        The resize is PIL's (what torchvision transforms on PIL images do, as in MIM-Refiner's
        evaluation): antialiased, separable, rounded to uint8 (within 2/255 of PIL's bicubic).
        """
        x = images_uint8.permute(0, 3, 1, 2)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = resize_like_pil(x, self.input_size, self.interpolation)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        return x.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)

    def _block_outputs(self, x: torch.Tensor, indices: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def forward_blocks(self, x, indices: list[int], poolings) -> dict[tuple[int, str], torch.Tensor]:
        """Pooled features {(block, pooling): tensor} from one pass that stops after the last block."""
        outputs = self._block_outputs(x, indices)
        return {
            (index, pooling): outputs[index][pooling]
            for index in indices
            for pooling in poolings
            if pooling in outputs[index]
        }


def pool_tokens(prefix: torch.Tensor | None, patches: torch.Tensor) -> dict[str, torch.Tensor]:
    """ViT-style pooling of one block: CLS token, mean of patch tokens, the full patch grid."""
    pooled = {"mean": patches.mean(dim=1, dtype=torch.float32), "tokens": patches}  # fp32 sum under bf16
    if prefix is not None and prefix.shape[1] > 0:
        pooled["cls"] = prefix[:, 0]
    return pooled


def pool_feature_map(feature_map: torch.Tensor) -> dict[str, torch.Tensor]:
    """CNN-style pooling of one stage: spatial mean, and the grid as tokens."""
    return {"mean": feature_map.mean(dim=(2, 3), dtype=torch.float32), "tokens": feature_map.flatten(2).transpose(1, 2)}


def resize_like_pil(x: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Resize a (B, 3, H, W) uint8 batch to size x size, as PIL does, returning uint8 values."""
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    if x.device.type == "cpu":  # torch's uint8 kernels: fast, and PIL's two passes with uint8 rounding
        return F.interpolate(x, size=(size, size), mode=mode, antialias=True)
    # other devices lack uint8 kernels: the same two passes (width, then height) in float, rounded
    x = x.float()
    x = F.interpolate(x, size=(x.shape[-2], size), mode=mode, antialias=True).round_().clamp_(0, 255)
    return F.interpolate(x, size=(size, size), mode=mode, antialias=True).round_().clamp_(0, 255)
