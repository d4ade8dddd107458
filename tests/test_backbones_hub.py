"""torchvision and torch.hub backbones (offline: local weights files, argument parsing)."""

import pytest
import torch

from mimprobe.backbones import check_model_spec, create_backbone
from mimprobe.backbones.hub_models import parse_hub_spec
from mimprobe.errors import ConfigError


def test_torchvision_cnn_exposes_stages_and_the_pre_logits_vector(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    backbone = create_backbone("torchvision:resnet18", weights=str(tmp_path / "resnet18.pth"))
    assert backbone.block_names == ["stage.layer1", "stage.layer2", "stage.layer3", "stage.layer4", "pre_logits"]
    assert (backbone.input_size, backbone.interpolation, backbone.mean) == (224, "bilinear", (0.485, 0.456, 0.406))
    x = backbone.preprocess(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
    features = backbone.forward_blocks(x, [1, 4], ["mean", "tokens"])
    seen = {}
    reference.fc.register_forward_hook(lambda module, inputs, output: seen.update(pre_logits=inputs[0]))
    reference.layer2.register_forward_hook(lambda module, inputs, output: seen.update(layer2=output))
    reference(x)
    assert torch.allclose(features[(4, "mean")], seen["pre_logits"], atol=1e-6)
    assert torch.allclose(features[(1, "mean")], seen["layer2"].mean(dim=(2, 3)), atol=1e-6)
    assert features[(1, "tokens")].shape == (2, 28 * 28, 128) and (4, "tokens") not in features
    early = backbone.forward_blocks(x, [1], ["mean"])
    assert torch.equal(early[(1, "mean")], features[(1, "mean")])


def test_torchhub_spec_names_repo_ref_and_entry():
    assert parse_hub_spec("facebookresearch/dinov2:dinov2_vitl14") == ("facebookresearch/dinov2", "dinov2_vitl14")
    assert parse_hub_spec("facebookresearch/dinov2:main:dinov2_vits14_reg") == ("facebookresearch/dinov2:main",
                                                                                   "dinov2_vits14_reg")
    check_model_spec("torchhub:facebookresearch/dinov2:dinov2_vitl14")
    for bad in ("torchhub:dinov2_vitl14", "torchhub:facebookresearch/dinov2", "torchhub:"):
        with pytest.raises(ConfigError):
            check_model_spec(bad)
