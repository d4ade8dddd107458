"""Exactly what reruns when data or code changes: every file is a declared output of one rule, shard
counts come from the data, and each rule's params carry a fingerprint of the code it runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from conftest import planned_jobs, run_snakemake, tiny_config
from readme_run import checkout_copy
from study_run import write_image_folder

pytestmark = pytest.mark.slow


def folder_config(root) -> dict:
    """Three classes of 10 train + 4 test images in shards of 8: 4 + 2 shards, 2 per job (3 jobs)."""
    return tiny_config(
        datasets={"pets": {"kind": "imagefolder", "root": str(root), "shard_size": 8, "val_fraction": 0.2}},
        backbones={"pixels": {"model": "pixels"}},
        probes={"knn": {"k": [3]}, "linear": {"learning_rates": [0.1], "epochs": 2}},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A checkout of its own (its modules get edited) and a finished run on an image folder."""
    repo = checkout_copy(tmp_path_factory.mktemp("repo"))
    workdir = tmp_path_factory.mktemp("run")
    config = folder_config(write_image_folder(workdir / "pets"))
    run_snakemake(workdir, config, repo=repo)
    return repo, workdir, config


def test_nothing_changed_nothing_runs(finished):
    repo, workdir, config = finished
    assert planned_jobs(workdir, config, repo) == {}


def test_a_deleted_shard_is_rebuilt_and_only_the_job_that_held_it_re_embeds(finished):
    repo, workdir, config = finished
    (workdir / "results/shards/pets/train-0001.npz").unlink()
    # the probes rerun on the (re-verified) store; of the three embedding jobs only the one missing a file
    assert planned_jobs(workdir, config, repo) == {"prepare_shards_pets": 1, "embed_shards": 1, "check_store": 1,
                                                   "probe_knn": 1, "probe_linear": 1, "report": 1, "all": 1}
    run_snakemake(workdir, config, repo=repo)
    assert planned_jobs(workdir, config, repo) == {}


def test_an_edited_module_reruns_exactly_the_jobs_whose_code_includes_it(finished):
    repo, workdir, config = finished
    metrics = repo / "workflow/mimprobe/metrics.py"
    original = metrics.read_text()
    metrics.write_text(original + "\n# an edit to the bootstrap\n")
    try:
        assert planned_jobs(workdir, config, repo) == {"probe_knn": 1, "probe_linear": 1, "report": 1, "all": 1}
    finally:
        metrics.write_text(original)
    knn = repo / "workflow/mimprobe/probes/knn.py"
    original = knn.read_text()
    knn.write_text(original + "\n# an edit to kNN only\n")
    try:
        assert planned_jobs(workdir, config, repo) == {"probe_knn": 1, "report": 1, "all": 1}
    finally:
        knn.write_text(original)
    assert planned_jobs(workdir, config, repo) == {}


def test_added_images_re_shard_and_re_embed_without_a_missing_shard(finished):
    repo, workdir, config = finished
    write_image_folder(workdir / "extra", train=8, test=0, seed=5)
    for image in (workdir / "extra/train/frog").iterdir():
        image.rename(workdir / "pets/train/frog" / f"added_{image.name}")
    jobs = planned_jobs(workdir, config, repo)
    # 38 train images: 5 + 2 shards, 4 jobs; the store grows, so it is rebuilt and every job re-embeds
    assert jobs == {"prepare_shards_pets": 1, "init_store": 1, "embed_shards": 4, "check_store": 1,
                    "probe_knn": 1, "probe_linear": 1, "report": 1, "all": 1}
    run_snakemake(workdir, config, repo=repo)
    store = zarr.open_group(str(workdir / "results/embeddings/pixels/pets.zarr"), mode="r")
    assert store["train/labels"].shape == (38,) and np.bincount(store["train/labels"][:]).tolist() == [10, 10, 18]
    meta = json.loads((workdir / "results/shards/pets/meta.json").read_text())
    assert list(meta["shards"]) == [f"train-000{i}" for i in range(5)] + ["test-0000", "test-0001"]


def test_every_output_but_the_store_chunks_is_a_declared_output(finished):
    repo, workdir, config = finished
    summary = run_snakemake(workdir, config, "--summary", repo=repo).stdout
    declared = {line.split("\t")[0] for line in summary.splitlines()[1:] if line.strip()}
    written = {str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if p.is_file()}
    inside_stores = {name for name in written if ".zarr/" in name and not name.endswith(".zarr/zarr.json")}
    assert written - inside_stores <= declared, sorted(written - inside_stores - declared)
