"""MIM-Refiner checkpoints: key format, pre-/post-norm architectures, safe and clear loading."""

from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from mimprobe.backbones import check_model_spec, create_backbone
from mimprobe.backbones.mim_refiner import ENTRIES, Arch, PostnormViT, build_refiner
from mimprobe.errors import ConfigError, MimprobeError

IMAGES = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (LayerNorms too), so a mis-mapped tensor cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2 + (tensor.ndim == 1) * 0.5)


def timm_reference(patch, dim, depth, heads, seed=0) -> VisionTransformer:
    model = VisionTransformer(img_size=224, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                              num_classes=0).eval()
    randomize(model, seed)
    with torch.no_grad():
        model.pos_embed[:, 0] = 0  # the refiner adds no position embedding to the CLS token
    return model


def export_in_refiner_format(model: VisionTransformer, grid: int) -> dict:
    """What MIM-Refiner's checkpoints hold: timm's keys except cls_tokens.tokens and pos_embed.embed."""
    state = dict(model.state_dict())
    state["cls_tokens.tokens"] = state.pop("cls_token")
    state["pos_embed.embed"] = state.pop("pos_embed")[:, 1:].reshape(1, grid, grid, -1)
    return {"state_dict": state, "ctor_kwargs": {"patch_size": 16}}  # extra entries are ignored


@pytest.mark.parametrize("arch", [
    pytest.param(("debug", 16, 16, 2, 2), id="debug"),
    pytest.param((None, 14, 48, 3, 4), id="h14-shaped"),   # patch 14, 16x16 grid, head dim 12
    pytest.param((None, 14, 64, 2, 8), id="twob14-shaped"),
])
@pytest.mark.parametrize("final_norm", [False, True])
def test_prenorm_checkpoint_loads_with_bit_identical_blocks(tmp_path, arch, final_norm):
    entry, patch, dim, depth, heads = arch
    reference = timm_reference(patch, dim, depth, heads)
    path = tmp_path / "refined.th"
    torch.save(export_in_refiner_format(reference, 224 // patch), path)
    if entry:
        backbone = create_backbone(f"mim_refiner:{entry}", weights=str(path), final_norm=final_norm)
    else:
        backbone = build_refiner(Arch(patch, dim, depth, heads), torch.load(path)["state_dict"],
                                 final_norm=final_norm)
    assert backbone.block_names == [f"blocks.{i}" for i in range(depth)] and backbone.input_size == 224
    x = backbone.preprocess(IMAGES)
    ours = backbone.forward_blocks(x, list(range(depth)), ["cls", "tokens"])
    expected = reference.forward_intermediates(x, norm=final_norm, intermediates_only=True, output_fmt="NLC",
                                               return_prefix_tokens=True)
    for block, (patches, prefix) in enumerate(expected):
        assert torch.equal(ours[(block, "tokens")], patches) and torch.equal(ours[(block, "cls")], prefix[:, 0])
    assert torch.equal(backbone.model.forward_features(x), reference.forward_features(x))


def reference_postnorm(state: dict, x: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """data2vec2's post-norm ViT written out with torch primitives, straight from the refiner's keys."""
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], 1e-6)  # noqa: E731
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    tokens = tokens.flatten(2).transpose(1, 2) + state["pos_embed.embed"].flatten(1, 2)
    tokens = torch.cat([state["cls_tokens.tokens"].expand(len(x), -1, -1), tokens], dim=1)
    tokens, outputs = ln(tokens, "embed_norm"), []
    dim = tokens.shape[-1]
    for i in range(sum(k.endswith("norm1.weight") for k in state)):
        p = f"blocks.{i}."
        attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": state[p + "attn.qkv.weight"],
                              "in_proj_bias": state[p + "attn.qkv.bias"],
                              "out_proj.weight": state[p + "attn.proj.weight"],
                              "out_proj.bias": state[p + "attn.proj.bias"]})
        tokens = ln(tokens + attn.eval()(tokens, tokens, tokens, need_weights=False)[0], p + "norm1")
        hidden = F.gelu(F.linear(tokens, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        tokens = ln(tokens + F.linear(hidden, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"]), p + "norm2")
        outputs.append(tokens)
    return outputs


def test_postnorm_d2v2_checkpoint_matches_the_postnorm_architecture(tmp_path):
    arch = Arch(16, 32, 3, 4, postnorm=True)
    source = PostnormViT(arch)
    randomize(source, seed=1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assert {"embed_norm.weight", "cls_tokens.tokens", "pos_embed.embed", "blocks.2.norm2.bias"} <= set(state)
    assert not any(k.startswith("norm.") for k in state)  # no final norm
    torch.save({"state_dict": state}, tmp_path / "d2v2.th")
    backbone = build_refiner(arch, torch.load(tmp_path / "d2v2.th")["state_dict"], final_norm=True)
    x = backbone.preprocess(IMAGES)
    ours = backbone.forward_blocks(x, [0, 1, 2], ["cls", "mean", "tokens"])
    for block, expected in enumerate(reference_postnorm(state, x, heads=4)):
        assert torch.allclose(ours[(block, "cls")], expected[:, 0], atol=1e-5)
        assert torch.allclose(ours[(block, "tokens")], expected[:, 1:], atol=1e-5)
    early = backbone.forward_blocks(x, [1], ["mean"])
    assert torch.equal(early[(1, "mean")], ours[(1, "mean")])


def test_checkpoint_with_wrong_keys_or_shapes_names_them(tmp_path):
    state = export_in_refiner_format(timm_reference(16, 16, 2, 2), 14)["state_dict"]
    del state["blocks.1.mlp.fc2.bias"]
    state["head.weight"] = torch.zeros(10, 16)
    state["norm.weight"] = torch.zeros(32)
    torch.save({"state_dict": state}, tmp_path / "bad.th")
    with pytest.raises(MimprobeError) as err:
        create_backbone("mim_refiner:debug", weights=str(tmp_path / "bad.th"))
    message = str(err.value)
    assert "missing keys: blocks.1.mlp.fc2.bias" in message and "unexpected keys: head.weight" in message
    assert "norm.weight (32,) (expected (16,))" in message and "bad.th" in message


def test_checkpoint_that_is_not_a_state_dict_is_rejected(tmp_path):
    torch.save({"state_dict": [torch.zeros(2)], "epoch": 3}, tmp_path / "list.th")
    with pytest.raises(MimprobeError, match="not a plain state dict"):
        create_backbone("mim_refiner:debug", weights=str(tmp_path / "list.th"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": _RunsCode(marker)}, tmp_path / "evil.th")
    with pytest.raises(MimprobeError, match="refused"):
        create_backbone("mim_refiner:mae_refined_l16", weights=str(tmp_path / "evil.th"))
    assert not marker.exists()


def test_missing_local_weights_name_the_config_key(tmp_path):
    with pytest.raises(MimprobeError) as err:
        create_backbone("mim_refiner:d2v2_refined_l16", weights=str(tmp_path / "nowhere.th"))
    assert "does not exist" in str(err.value) and "backbones.<name>.weights" in str(err.value)


def test_failed_download_says_to_set_local_weights(tmp_path, monkeypatch):
    asked = []

    def offline(url, dst, progress=True):
        asked.append(url)
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MimprobeError) as err:
        create_backbone("mim_refiner:dbot_refined_h14")
    assert asked == ["https://ml.jku.at/research/mimrefiner/download/dbotrefined_h14.th"]
    assert "could not download" in str(err.value) and "weights:" in str(err.value)


def test_every_refined_entry_is_known_and_others_are_rejected():
    refined = [e for e in ENTRIES if e != "debug"]
    assert len(refined) == 8 and {ENTRIES[e][0].postnorm for e in refined if e.startswith("d2v2")} == {True}
    for entry in ENTRIES:
        check_model_spec(f"mim_refiner:{entry}")
    with pytest.raises(ConfigError, match="mae_refined_l16"):
        check_model_spec("mim_refiner:mae_refined_b16")


def test_debug_entry_builds_with_the_fixed_sincos_position_embedding():
    a, b = create_backbone("mim_refiner:debug", seed=3), create_backbone("mim_refiner:debug", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    pos = a.model.pos_embed
    assert pos.shape == (1, 197, 16) and torch.equal(pos[0, 0], torch.zeros(16))
    assert torch.equal(pos[0, 1, :8], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin(0), cos(0) of row 0
