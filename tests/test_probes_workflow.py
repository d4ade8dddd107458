"""The real DAG with every probe family switched on, on tiny data with token grids stored."""

import json

import pandas as pd
import pytest
import torch
from conftest import run_snakemake, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def all_probes_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("all_probes")
    config = tiny_config(
        backbones={"random_vit": {"model": "random:vit_tiny_patch16_224", "batch_size": 32}},
        features={"blocks": [-2, -1], "pooling": ["cls", "mean", "tokens"]},
        probes={"knn": {"k": [5, 10]},
                "linear": {"learning_rates": [0.01, 0.1], "epochs": 2},
                "logreg": {"enabled": True, "c_values": [0.1, 10.0], "refine_steps": 0, "max_iter": 30},
                "mlp": {"enabled": True, "epochs": 2},
                "svm": {"enabled": True, "c_values": [0.1], "refine_steps": 0, "max_iter": 30, "pca_dim": 16,
                        "rbf_c_values": [1.0], "rbf_gamma_scales": [1.0]},
                "fewshot": {"enabled": True, "shots": [1, 5], "draws": 2, "c_values": [1.0]},
                "kmeans": {"enabled": True, "n_init": 1},
                "attentive": {"enabled": True, "epochs": 2}},
        report={"bootstrap": 10})
    run_snakemake(workdir, config)
    return workdir


def test_every_family_lands_in_the_tidy_table(all_probes_run):
    table = pd.read_csv(all_probes_run / "results/report/metrics.csv")
    assert set(table.probe) == {"knn", "linear", "logreg", "mlp", "svm", "fewshot", "kmeans", "attentive"}
    test = table[table.split == "test"]
    assert set(test[test.probe == "kmeans"].metric) == {"acc", "nmi", "ami", "ari"}
    assert not (table[(table.probe == "kmeans")].split == "val").any()
    assert set(test[test.probe == "fewshot"].setting) == {"shots=1", "shots=5"}
    assert set(test[test.probe == "attentive"].pooling) == {"tokens"}
    assert {"tokens", "cls", "mean"} <= set(test[test.probe == "mlp"].pooling)  # flattened tokens too
    assert {"kernel=linear", "kernel=rbf"} == {s.split(",")[0] for s in test[test.probe == "svm"].setting}
    linear = test[(test.probe == "linear") & (test.metric == "top1")]
    assert {(10, "cls"), (11, "mean"), (11, "cls+mean")} <= set(zip(linear.block, linear.pooling))


def test_results_carry_histories_heads_and_predictions(all_probes_run):
    probes = all_probes_run / "results/probes/random_vit/digits"
    for family in ("linear", "mlp", "attentive"):
        record = json.loads((probes / f"{family}.json").read_text())["results"][0]
        assert set(record["history"][0]) == {"epoch", "train_loss", "val_loss", "train_top1", "val_top1"}
    for family in ("knn", "linear", "logreg", "mlp", "svm", "fewshot", "kmeans", "attentive"):
        # plain state dicts: loadable without unpickling code
        assert isinstance(torch.load(probes / f"{family}.heads.pt", weights_only=True), dict)
    heads = torch.load(probes / "linear.heads.pt", weights_only=True)
    head = heads["b011/cls+mean/" + json.loads((probes / "linear.json").read_text())["results"][-1]["setting"]]
    assert head["weight"].shape == (10, 2 * 192) and head["poolings"] == ["cls", "mean"]
    with open(probes / "fewshot.predictions.npz", "rb") as handle:
        import numpy as np

        stored = np.load(handle)
        assert stored["labels"].shape == (128,) and len(stored.files) == 1 + 4 * 2  # (2 blocks x cls, mean) x 2 shots


def test_probe_jobs_use_the_rules_threads_and_log_progress(all_probes_run):
    for family in ("knn", "linear", "logreg", "kmeans"):
        payload = json.loads((all_probes_run / f"results/probes/random_vit/digits/{family}.json").read_text())
        assert payload["compute"] == {"device": "cpu", "threads": 2}  # threads: 8, capped by --cores 2
        assert set(payload["timing"]) == {"load_s", "fit_s", "bootstrap_s"}
        log = (all_probes_run / f"logs/probe_{family}/random_vit/digits.log").read_text()
        assert f"{family} " in log and "ETA" in log and "\r" not in log
