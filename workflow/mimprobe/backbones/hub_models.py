"""torchvision models (CNN stages + pooled pre-logits, or ViT blocks) and torch.hub ViTs such as DINOv2."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, MimprobeError
from .base import Backbone, pool_feature_map, pool_tokens
from .source import Source
from .weights import plain_state_dict, safe_load


def parse_hub_spec(arg: str) -> tuple[str, str]:
    """'owner/repo[:ref]:entry' -> ('owner/repo[:ref]', 'entry')."""
    repo, _, entry = arg.rpartition(":")
    if not entry or "/" not in repo:
        raise ConfigError(f"torchhub spec {arg!r}: use torchhub:<owner>/<repo>[:<ref>]:<entry>, "
                          "e.g. torchhub:facebookresearch/dinov2:dinov2_vitl14")
    return repo, entry


def _load_local(model: nn.Module, weights: str, source: str) -> None:
    from .weights import check_keys_and_shapes

    state_dict = plain_state_dict(safe_load(weights, source), weights, source)
    check_keys_and_shapes(state_dict, model.state_dict(), weights, source)
    model.load_state_dict(state_dict, strict=True)


# ---- torchvision ------------------------------------------------------------------------------

def create_torchvision(name: str, weights: str | None, final_norm: bool) -> Backbone:
    import torchvision

    source = f"torchvision:{name}"
    try:
        tv_weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise MimprobeError(f"{source}: torchvision has no model {name!r}; "
                            "see torchvision.models.list_models()") from None
    try:
        model = torchvision.models.get_model(name, weights=None if weights else tv_weights)
    except Exception as err:
        raise MimprobeError(f"{source}: could not load the pretrained weights ({err}). Without internet, "
                            "set `weights:` of this backbone to a local state dict file.") from None
    if weights:
        _load_local(model, weights, source)
    backbone = TorchvisionViT(model, final_norm) if hasattr(model, "encoder") and hasattr(model, "class_token") \
        else TorchvisionCNN(model)
    preset = tv_weights.transforms()
    backbone.input_size = int(preset.crop_size[0])
    backbone.interpolation = preset.interpolation.value
    backbone.mean, backbone.std = tuple(preset.mean), tuple(preset.std)
    return backbone


class LoopedViT(Backbone):
    """A ViT run block by block up to the last requested one; subclasses say how to embed and norm."""

    poolings = ("cls", "mean", "tokens")
    prefix = 1  # CLS (+ register) tokens before the patch tokens

    def __init__(self, model, final_norm: bool, layer_prefix: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.final_norm = final_norm
        self.block_names = [f"{layer_prefix}.{i}" for i in range(len(self.layers()))]

    def _block_outputs(self, x, indices):
        x, outputs = self.embed(x), {}
        for i, layer in enumerate(self.layers()[: max(indices) + 1]):
            x = layer(x)
            if i in indices:
                y = self.norm(x) if self.final_norm else x
                outputs[i] = pool_tokens(y[:, : self.prefix], y[:, self.prefix:])
        return outputs


class TorchvisionViT(LoopedViT):
    def __init__(self, model, final_norm: bool):
        super().__init__(model, final_norm, "encoder.layers")

    def layers(self):
        return self.model.encoder.layers

    def embed(self, x):
        x = self.model._process_input(x)
        return torch.cat([self.model.class_token.expand(len(x), -1, -1), x], dim=1) + self.model.encoder.pos_embedding

    def norm(self, x):
        return self.model.encoder.ln(x)


class TorchvisionCNN(Backbone):
    """Stages (ResNet layers, RegNet trunk blocks or `features` children) and the pre-logits vector."""

    poolings = ("mean", "tokens")

    def __init__(self, model):
        super().__init__()
        from torchvision.models.feature_extraction import get_graph_node_names

        self.model = model.eval().requires_grad_(False)
        nodes = get_graph_node_names(self.model)[1]
        if hasattr(model, "layer4"):
            stages = [f"layer{i}" for i in range(1, 5)]
        elif hasattr(model, "trunk_output"):
            stages = [f"trunk_output.{name}" for name, _ in model.trunk_output.named_children()]
        elif hasattr(model, "features"):
            stages = [f"features.{name}" for name, _ in model.features.named_children()]
        else:
            raise MimprobeError(f"torchvision model {type(model).__name__}: no known stage layout")
        head = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]
        pre_logits = nodes[nodes.index(head) - 1]  # the node feeding the classifier
        self.nodes = stages + [pre_logits]
        self.block_names = [f"stage.{s}" for s in stages] + ["pre_logits"]
        self._extractors = {}

    def _block_outputs(self, x, indices):
        from torchvision.models.feature_extraction import create_feature_extractor

        key = tuple(indices)
        if key not in self._extractors:  # the traced graph ends at the last requested node
            self._extractors[key] = create_feature_extractor(self.model, [self.nodes[i] for i in indices])
        outs = self._extractors[key](x)
        result = {}
        for i in indices:
            value = outs[self.nodes[i]]
            result[i] = pool_feature_map(value) if value.ndim == 4 else {"mean": value.flatten(1)}
        return result


# ---- torch.hub --------------------------------------------------------------------------------

def create_torchhub(arg: str, weights: str | None, final_norm: bool) -> Backbone:
    repo, entry = parse_hub_spec(arg)
    source = f"torchhub:{arg}"
    try:
        # Naming a hub repo in the config means trusting its code (it is imported to build the model).
        model = torch.hub.load(repo, entry, pretrained=weights is None, trust_repo=True)
    except Exception as err:
        raise MimprobeError(f"{source}: torch.hub.load failed ({err}). It needs internet once (then torch.hub's "
                            "cache); check the repo and entry names.") from None
    if weights:
        _load_local(model, weights, source)
    if not (hasattr(model, "blocks") and hasattr(model, "prepare_tokens_with_masks")):
        raise MimprobeError(f"{source}: only DINOv2-style hub ViTs (blocks, prepare_tokens_with_masks) are supported")
    return HubViT(model, final_norm)


class HubViT(LoopedViT):
    """DINOv2-style hub ViT: CLS, optional register tokens, then patch tokens."""

    def __init__(self, model, final_norm: bool):
        super().__init__(model, final_norm, "blocks")
        self.prefix = 1 + int(getattr(model, "num_register_tokens", 0))

    def layers(self):
        return self.model.blocks

    def embed(self, x):
        return self.model.prepare_tokens_with_masks(x)

    def norm(self, x):
        return self.model.norm(x)


TORCHVISION = Source(lambda name, weights, final_norm, seed: create_torchvision(name, weights, final_norm))
TORCHHUB = Source(lambda name, weights, final_norm, seed: create_torchhub(name, weights, final_norm),
                  check=parse_hub_spec)
