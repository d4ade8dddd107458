"""The SLURM profiles turn into the intended sbatch requests (offline: a dry run plus the plugin's
own sbatch builder). The real-cluster proof is .ci/slurm_check.sh, run by CI after the tests."""

import re
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow


class Resources(dict):
    __getattr__ = dict.get


def planned_resources(workdir, profile: str) -> dict[str, dict]:
    """{rule: resources} from a dry run of the demo config, with the default probe threads, with a
    profile (no jobs submitted)."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["probes"].pop("threads")
    out = run_snakemake(workdir, config, "-n", "--profile", str(REPO / "profiles" / profile))
    text = out.stdout + out.stderr
    planned = {}
    for rule, block in re.findall(r"^rule (\w+):\n((?:    .*\n)+)", text, re.M):
        line = re.search(r"^    resources: (.*)$", block, re.M).group(1)
        values = dict(item.split("=", 1) for item in line.split(", "))
        threads = re.search(r"^    threads: (\d+)$", block, re.M)
        values["threads"] = threads.group(1) if threads else "1"
        planned[rule] = Resources({k: int(v) if v.isdigit() else v for k, v in values.items()})
    return planned


def sbatch_call(resources: Resources) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=resources, threads=resources["threads"])
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "x", "account": "", "partition": "",
              "workdir": "."}
    return get_submit_command(job, params) + set_gres_string(job)


def test_gpu_profile_asks_one_gpu_per_embedding_job_and_cpus_for_probes(tmp_path):
    planned = planned_resources(tmp_path, "slurm")
    embed = sbatch_call(planned["embed_shards"])
    assert "--gpus=1" in embed and "--cpus-per-gpu=8" in embed
    assert "--mem 32000" in embed and "-t 30" in embed
    linear = sbatch_call(planned["probe_linear"])
    # probe CPUs are the rule's threads (8), capped here by the dry run's --cores 2
    assert planned["probe_linear"]["threads"] == 2
    assert "--gpus" not in linear and "--cpus-per-task=2" in linear and "-t 120" in linear


def test_cpu_profile_asks_no_gpu(tmp_path):
    planned = planned_resources(tmp_path, "slurm-cpu")
    embed = sbatch_call(planned["embed_shards"])
    assert "--gpus" not in embed and "--cpus-per-task=1" in embed and "--mem 3000" in embed
