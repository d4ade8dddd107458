"""The README's commands, run as a user types them (a clean environment, from the checkout's root):
the quick start's `make demo`, and the full study's dry run plus a small real run of the full study's
probe config (the rehearsal's DAG at reduced size: a CIFAR-100-format archive of custom size and a
backbone with ViT-L's output shapes)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml
from readme_run import checkout_copy, run_as_user

pytestmark = pytest.mark.slow


@pytest.fixture
def checkout(tmp_path):
    return checkout_copy(tmp_path)


def test_make_demo_runs_the_offline_default(checkout):
    result = run_as_user(checkout, "make demo")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(checkout / "results/report/metrics.csv")
    assert set(table.backbone) == {"effnet_lite0", "random_vit_tiny", "pixels"}
    assert set(table.probe) == {"knn", "linear", "logreg", "mlp", "svm", "fewshot", "kmeans"}
    best = table[(table.split == "test") & (table.metric == "top1") & (table.backbone == "effnet_lite0")]
    assert best.value.max() > 0.5  # real ImageNet features on the rendered digits; chance is 0.1


def test_the_full_study_plans_offline(checkout):
    result = run_as_user(checkout, ".venv/bin/snakemake -n")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^download_cifar100\s+1$", result.stdout, re.M)
    assert len(set(re.findall(r"results/shards/cifar100/(?:train|test)-\d{4}\.npz", result.stdout))) == 60


def test_a_small_full_study_runs_with_the_readme_command(checkout):
    made = run_as_user(checkout, ".venv/bin/mimprobe synthetic-cifar small-cifar100.tar.gz --train 1200 --test 300")
    assert made.returncode == 0, made.stderr
    config = yaml.safe_load((checkout / "config/config.yaml").read_text())
    config["datasets"] = {"cifar100": config["datasets"]["cifar100"] | {
        "archive": "small-cifar100.tar.gz", "verify_md5": False, "shard_size": 200}}
    config["backbones"] = {"vit_l_shapes": {"model": "synthetic:vit_large_patch16_224"}}
    (checkout / "small.yaml").write_text(yaml.safe_dump(config))
    result = run_as_user(checkout, ".venv/bin/snakemake --cores 2 --configfile small.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the archive's own sizes: 6 + 2 shards of 200, embedded 2 per job
    assert len(list((checkout / "results/shards/cifar100").glob("*.npz"))) == 8
    assert len(list((checkout / "results/embeddings/vit_l_shapes/cifar100.chunks").glob("*.json"))) == 4
    table = pd.read_csv(checkout / "results/report/metrics.csv")
    assert set(table.probe) == {"knn", "linear", "logreg", "fewshot", "kmeans"}
    test_top1 = table[(table.split == "test") & (table.metric == "top1")]
    assert set(test_top1.block) >= set(range(16, 24))  # ViT-L's last 8 of 24 blocks
    assert test_top1.value.max() > 0.05 and (test_top1.ci_low <= test_top1.value).all()  # chance is 0.01
