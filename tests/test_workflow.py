"""The real DAG through the Snakemake CLI on small data: outputs, reruns, and early config errors."""

import copy
import re

import pandas as pd
import pytest
from conftest import REPO, planned_jobs, run_snakemake, tiny_config

pytestmark = pytest.mark.slow
COLUMNS = "backbone,dataset,block,pooling,probe,setting,split,metric,value,ci_low,ci_high"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config()
    run_snakemake(workdir, config)
    return workdir, config


def test_the_report_is_one_tidy_table(finished_run):
    workdir, _ = finished_run
    csv = workdir / "results/report/metrics.csv"
    assert csv.read_text().splitlines()[0] == COLUMNS
    table = pd.read_csv(csv)
    assert set(table.split) == {"val", "test"}
    assert {"top1", "top5", "macro_f1"} <= set(table.metric)
    assert set(table.backbone) == {"pixels", "random_vit"} and set(table.probe) == {"knn", "linear"}
    test_top1 = table[(table.split == "test") & (table.metric == "top1")]
    assert test_top1.value.between(0, 1).all() and (test_top1.ci_low <= test_top1.value).all()
    # random ViT-tiny: blocks 10 and 11 with cls and mean pooling, for each probe
    vit = test_top1[test_top1.backbone == "random_vit"]
    # the linear grid adds the last block's cls+mean head
    assert sorted(set(zip(vit.block, vit.pooling))) == [(10, "cls"), (10, "mean"), (11, "cls"), (11, "cls+mean"),
                                                        (11, "mean")]
    assert (workdir / "results/report/plots/accuracy_per_block/knn.png").stat().st_size > 5000
    assert "| pixels | knn |" in (workdir / "results/report/metrics.md").read_text()


def test_a_second_run_with_nothing_changed_does_nothing(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir, config) == {}


def test_changing_a_probe_parameter_reruns_only_that_probe_and_the_report(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["probes"]["knn"]["k"] = [3, 10]
    assert planned_jobs(workdir, changed) == {"probe_knn": 2, "report": 1, "all": 1}


def test_adding_a_backbone_embeds_only_that_backbone(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["backbones"]["second_vit"] = {"model": "random:vit_tiny_patch16_224"}
    jobs = planned_jobs(workdir, changed)
    assert jobs == {"init_store": 1, "embed_shards": 3, "check_store": 1, "probe_knn": 1, "probe_linear": 1,
                    "report": 1, "all": 1}  # 6 shards, 2 per job (auto: at most 4 jobs)


def test_overriding_one_backbones_features_re_embeds_only_that_backbone(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["backbones"]["random_vit"]["features"] = {"blocks": [-1]}
    jobs = planned_jobs(workdir, changed)
    assert jobs == {"init_store": 1, "embed_shards": 3, "check_store": 1, "probe_knn": 1, "probe_linear": 1,
                    "report": 1, "all": 1}


def test_token_grids_in_one_backbones_features_run_the_attentive_probe_for_that_backbone_only(tmp_path):
    config = tiny_config()
    config["backbones"]["random_vit"]["features"] = {"pooling": ["cls", "mean", "tokens"]}
    config["probes"]["attentive"] = {"enabled": True}
    jobs = planned_jobs(tmp_path, config)
    assert jobs["probe_attentive"] == 1 and jobs["probe_knn"] == 2
    out = run_snakemake(tmp_path, config, "-n", "--forceall").stdout
    assert "results/probes/random_vit/digits/attentive.json" in out
    assert "results/probes/pixels/digits/attentive.json" not in out


def test_bad_config_fails_before_any_job_runs_naming_the_key(tmp_path):
    config = tiny_config()
    config["datasets"]["digits"]["shard_size"] = -5
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    assert "datasets.digits.shard_size" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_full_study_plans_offline_and_mim_refiner_fails_clearly(tmp_path):
    config = REPO / "config" / "config.yaml"
    out = run_snakemake(tmp_path, config, "-n").stdout
    jobs = planned_jobs(tmp_path, config)
    assert jobs["download_cifar100"] == 1 and jobs["prepare_shards_cifar100"] == 1 and jobs["embed_shards"] == 4
    assert len(set(re.findall(r"results/shards/cifar100/(?:train|test)-\d{4}\.npz", out))) == 60  # 50 + 10 of 1,000
    # A node without internet points `weights:` at a local file; a wrong path fails with the fix.
    missing = str(tmp_path / "absent" / "maerefined_l16.th")
    refiner_only = tiny_config(backbones={"refined": {"model": "mim_refiner:mae_refined_l16", "weights": missing}})
    result = run_snakemake(tmp_path, refiner_only, check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/init_store/refined/digits.log").read_text()
    assert f"weights file {missing} does not exist" in log and "backbones.<name>.weights" in log


def test_two_runs_with_the_same_seed_give_identical_metrics(finished_run, tmp_path):
    workdir, config = finished_run
    run_snakemake(tmp_path, config)
    assert (tmp_path / "results/report/metrics.csv").read_text() == \
        (workdir / "results/report/metrics.csv").read_text()
