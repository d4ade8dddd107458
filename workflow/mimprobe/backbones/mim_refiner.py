"""MIM-Refiner (ml-jku/MIM-Refiner) backbones without its code: weights mapped onto timm / a small module.

Pre-norm checkpoints (MAE, dBOT, CrossMAE) load into timm's VisionTransformer: the keys
equal timm's except `cls_tokens.tokens` (cls_token) and `pos_embed.embed` (1, h, w, D), a fixed
sin-cos buffer added to patch tokens only, i.e. timm's pos_embed with zeros at the CLS position.
Post-norm data2vec2 checkpoints run in `PostnormViT` below, which has the refiner's own key names:
LayerNorm after the embedding, blocks x = norm1(x + attn(x)); x = norm2(x + mlp(x)), no final norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone, pool_tokens
from .source import Source
from .weights import check_keys_and_shapes, download_to_hub_cache, plain_state_dict, safe_load

URL = "https://ml.jku.at/research/mimrefiner/download/{file}.th"


@dataclass(frozen=True)
class Arch:
    patch: int
    dim: int
    depth: int
    heads: int
    postnorm: bool = False
    image: int = 224

    @property
    def grid(self) -> int:
        return self.image // self.patch


L16, H14, TWOB14 = Arch(16, 1024, 24, 16), Arch(14, 1280, 32, 16), Arch(14, 2560, 24, 32)
ENTRIES: dict[str, tuple[Arch, str | None]] = {
    "debug": (Arch(16, 16, 2, 2), None),
    "mae_refined_l16": (L16, "maerefined_l16"),
    "dbot_refined_l16": (L16, "dbotrefined_l16"),
    "crossmae_refined_l16": (L16, "crossmaerefined_l16"),
    "d2v2_refined_l16": (Arch(16, 1024, 24, 16, postnorm=True), "d2v2refined_l16"),
    "mae_refined_h14": (H14, "maerefined_h14"),
    "dbot_refined_h14": (H14, "dbotrefined_h14"),
    "d2v2_refined_h14": (Arch(14, 1280, 32, 16, postnorm=True), "d2v2refined_h14"),
    "mae_refined_twob14": (TWOB14, "maerefined_twob14"),
}


def check_entry(entry: str) -> None:
    if entry not in ENTRIES:
        raise ConfigError(f"mim_refiner has no entry {entry!r}; use one of {', '.join(ENTRIES)}")


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """(1, grid, grid, dim) fixed 2D sin-cos embedding: [sin, cos] of the row, then of the column."""
    omega = 1.0 / 10000 ** (torch.arange(0, dim // 2, 2, dtype=torch.double) / (dim // 2))
    pos = torch.arange(grid, dtype=torch.double)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one_axis(coords):
        angles = coords.unsqueeze(-1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    return torch.cat([one_axis(rows), one_axis(cols)], dim=-1).float().unsqueeze(0)


# ---- pre-norm: timm's VisionTransformer -------------------------------------------------------

def timm_vit(arch: Arch):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=arch.image, patch_size=arch.patch, embed_dim=arch.dim, depth=arch.depth,
        num_heads=arch.heads, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
        num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
    )


def refiner_to_timm(state_dict: dict) -> dict:
    """Rename the two refiner-specific tensors; every other key already equals timm's."""
    mapped = {k: v for k, v in state_dict.items() if k not in ("cls_tokens.tokens", "pos_embed.embed")}
    if "cls_tokens.tokens" in state_dict:
        mapped["cls_token"] = state_dict["cls_tokens.tokens"]
    if "pos_embed.embed" in state_dict:
        grid_embed = state_dict["pos_embed.embed"]
        flat = grid_embed.reshape(1, -1, grid_embed.shape[-1])
        mapped["pos_embed"] = torch.cat([torch.zeros_like(flat[:, :1]), flat], dim=1)
    return mapped


# ---- post-norm: data2vec2 ---------------------------------------------------------------------

class _PosEmbed(nn.Module):
    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.register_buffer("embed", sincos_pos_embed(grid, dim))


class _ClassTokens(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(1, 1, dim))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        # qkv features are laid out as (three, heads, head_dim), as in timm and the refiner
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PostnormBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn, self.norm1 = _Attention(dim, heads), nn.LayerNorm(dim, eps=1e-6)
        self.mlp, self.norm2 = _Mlp(dim), nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class PostnormViT(nn.Module):
    """The data2vec2 refined ViT with the refiner's key names (loads its state dict strictly)."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.patch_embed = _PatchEmbed(arch.patch, arch.dim)
        self.pos_embed = _PosEmbed(arch.grid, arch.dim)
        self.cls_tokens = _ClassTokens(arch.dim)
        self.embed_norm = nn.LayerNorm(arch.dim, eps=1e-6)
        self.blocks = nn.ModuleList(PostnormBlock(arch.dim, arch.heads) for _ in range(arch.depth))

    def embed(self, x):
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # (B, h, w, D)
        x = (x + self.pos_embed.embed).flatten(1, 2)
        x = torch.cat([self.cls_tokens.tokens.expand(len(x), -1, -1), x], dim=1)
        return self.embed_norm(x)

    def forward_intermediates(self, x, indices: list[int]) -> dict[int, torch.Tensor]:
        """Outputs of the requested blocks, stopping after the last one."""
        wanted, outputs = set(indices), {}
        x = self.embed(x)
        for i, block in enumerate(self.blocks[: max(indices) + 1]):
            x = block(x)
            if i in wanted:
                outputs[i] = x
        return outputs

    def forward(self, x):
        return self.forward_intermediates(x, [len(self.blocks) - 1])[len(self.blocks) - 1]


class RefinerPostnorm(Backbone):
    """Backbone wrapper of PostnormViT: it has no final norm, so `final_norm` changes nothing."""

    interpolation = "bicubic"
    poolings = ("cls", "mean", "tokens")

    def __init__(self, model: PostnormViT):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.block_names = [f"blocks.{i}" for i in range(len(model.blocks))]

    def _block_outputs(self, x, indices):
        outs = self.model.forward_intermediates(x, indices)
        return {i: pool_tokens(outs[i][:, :1], outs[i][:, 1:]) for i in indices}


# ---- entry point ------------------------------------------------------------------------------

def load_refiner_weights(entry: str, weights: str | None) -> tuple[dict, str]:
    source = f"mim_refiner:{entry}"
    if weights is None:
        file = ENTRIES[entry][1]
        path = download_to_hub_cache(URL.format(file=file), source)
    else:
        path = weights
    return plain_state_dict(safe_load(path, source), path, source), str(path)


def build_refiner(arch: Arch, state_dict: dict | None, path: str = "", source: str = "mim_refiner",
                  final_norm: bool = False, seed: int = 0) -> Backbone:
    """The backbone of `arch`, with `state_dict` in the refiner's key format (None: seeded random init)."""
    from .timm_models import wrap_timm_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PostnormViT(arch) if arch.postnorm else timm_vit(arch)
    if state_dict is None:
        if not arch.postnorm:  # the refiner's fixed sin-cos embedding, not timm's learned init
            fixed = refiner_to_timm({"pos_embed.embed": sincos_pos_embed(arch.grid, arch.dim)})["pos_embed"]
            model.pos_embed.data.copy_(fixed)
    else:
        if not arch.postnorm:
            state_dict = refiner_to_timm(state_dict)
        check_keys_and_shapes(state_dict, model.state_dict(), path, source)
        model.load_state_dict(state_dict, strict=True)
    if arch.postnorm:
        backbone = RefinerPostnorm(model)
    else:
        backbone = wrap_timm_model(model, final_norm)
    backbone.input_size, backbone.interpolation = arch.image, "bicubic"
    backbone.mean, backbone.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return backbone


def create_refiner(entry: str, weights: str | None, final_norm: bool, seed: int) -> Backbone:
    check_entry(entry)
    arch, file = ENTRIES[entry]
    if file is None and weights is None:  # `debug`: random init, nothing to download
        return build_refiner(arch, None, final_norm=final_norm, seed=seed)
    state_dict, path = load_refiner_weights(entry, weights)
    return build_refiner(arch, state_dict, path, f"mim_refiner:{entry}", final_norm, seed)


MIM_REFINER = Source(create_refiner, check=check_entry)
