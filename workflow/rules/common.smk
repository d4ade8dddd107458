import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

SRC = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(SRC))

from mimprobe import layout
from mimprobe.config import backbone_features, validate_config
from mimprobe.datasets import KINDS, kind_of
from mimprobe.errors import MimprobeError
from mimprobe.plan import lanes, shard_names, shard_sources, split_sizes
from mimprobe.plan import store_layout as plan_store_layout
from mimprobe.probes import enabled_families
from mimprobe.provenance import code_fingerprint

try:
    validate_config(config)
except MimprobeError as err:
    raise WorkflowError(f"Invalid config: {err}") from None

# Image folders are checked image by image (headers only) before any job runs; cluster jobs,
# which re-read this file, skip it.
for _name, _dataset in config["datasets"].items():
    if _dataset["kind"] == "imagefolder" and workflow.is_main_process:
        from mimprobe.datasets.imagefolder import check_image_folder

        try:
            check_image_folder(_dataset["root"], _dataset["allow_outside_links"])
        except MimprobeError as err:
            raise WorkflowError(f"Dataset {_name} (config key datasets.{_name}.root): {err}") from None

# Rules call `mimprobe`, a shell function defined here, never whatever `mimprobe` is on PATH: it runs
# the package this file planned with, through the interpreter that runs Snakemake (SLURM jobs re-read
# this file and resolve the same paths), or the rule's environment's python under conda deployment.
_python = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
shell.prefix(
    "set -euo pipefail; "
    f'mimprobe() {{{{ PYTHONPATH={shlex.quote(str(SRC))} {shlex.quote(_python)} -m mimprobe "$@"; }}}}; '
)

DATASETS = list(config["datasets"])
BACKBONES = list(config["backbones"])
try:
    SIZES = {name: split_sizes(entry) for name, entry in config["datasets"].items()}
    SOURCES = {name: shard_sources(entry, SIZES[name]) for name, entry in config["datasets"].items()}
except MimprobeError as err:
    raise WorkflowError(f"Invalid dataset: {err}") from None
SHARDS = {name: shard_names(entry, SIZES[name]) for name, entry in config["datasets"].items()}
LANES = {
    (backbone, dataset): lanes(SHARDS[dataset], backbone_features(config, backbone)["shards_per_job"])
    for backbone in BACKBONES
    for dataset in DATASETS
}
PROBES = enabled_families(config)  # for any backbone
PROBES_OF = {backbone: enabled_families(config, backbone) for backbone in BACKBONES}
# What each rule's output is computed by: a change to one of these modules reruns its jobs.
CODE = {
    "prepare_shards": code_fingerprint("shards"),
    "embed": code_fingerprint("extract", "shards"),  # shard content comes from the shards module
    "check_store": code_fingerprint("store"),
    "report": code_fingerprint("report.write"),
} | {family: code_fingerprint("probes.common", f"probes.{family}") for family in PROBES}


def sharding_memory_mb(name):
    """A dataset held in memory a few times over (decoded archive, arrays, shard copies), plus headroom."""
    entry = config["datasets"][name]
    images = sum(SIZES[name].values()) * entry["image_size"] ** 2 * 3
    return 2000 + 4 * images // 1_000_000


def archive_path(entry):
    """The dataset's archive, for kinds read from one: its local file, or what its download rule fetches."""
    archive = kind_of(entry).archive
    if archive is None:
        return []
    return entry["archive"] or f"{config['resources_dir']}/{archive['filename']}"


def downloads():
    """{kind: archive spec} of every kind a dataset downloads (one with an archive and no local file)."""
    return {
        d["kind"]: KINDS[d["kind"]].archive
        for d in config["datasets"].values()
        if KINDS[d["kind"]].archive and not d["archive"]
    }


def choice(names):
    return "|".join(map(re.escape, names)) or "none"


wildcard_constraints:
    dataset=choice(DATASETS),
    backbone=choice(BACKBONES),
    lane=r"lane-\d{3}",


def as_json(value):
    """Compact, key-sorted JSON for params (stable, so unchanged config never triggers reruns)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def dataset_config(wildcards):
    return as_json(config["datasets"][wildcards.dataset])


def backbone_config(wildcards):
    entry = dict(config["backbones"][wildcards.backbone])
    entry.pop("batch_size", None)  # speed only: changing it must not re-embed
    entry.pop("features", None)  # part of features_config
    return as_json(entry)


def features_config(wildcards):
    features = dict(backbone_features(config, wildcards.backbone))
    features.pop("shards_per_job")  # which job embeds a shard: the lanes' own params
    return as_json(features)


def store_layout(wildcards):
    """The store's shape, as planned from the dataset: its splits, shards and image size."""
    return as_json(plan_store_layout(config["datasets"][wildcards.dataset], SIZES[wildcards.dataset]))


def store_identity(wildcards):
    """Everything a store's content depends on. init_store reads no file but carries all of it, so a
    change anywhere (config, images, code, how shards are grouped into jobs) recreates the store and
    re-embeds it, while a shard rebuilt unchanged re-embeds only the job that was missing it."""
    lanes = LANES[(wildcards.backbone, wildcards.dataset)]
    sources = SOURCES[wildcards.dataset]
    return as_json(
        [
            backbone_config(wildcards),
            features_config(wildcards),
            store_layout(wildcards),
            CODE["embed"],
            {lane: [sources[shard] for shard in named] for lane, named in lanes.items()},
        ]
    )


def lane_shards(wildcards):
    return LANES[(wildcards.backbone, wildcards.dataset)][wildcards.lane]


def lane_shard_files(wildcards):
    return [layout.shard_path(wildcards.dataset, shard) for shard in lane_shards(wildcards)]


def lane_sources(wildcards):
    """The lane's shards and what each is made of: the job reruns when either changes."""
    sources = SOURCES[wildcards.dataset]
    return as_json({shard: sources[shard] for shard in lane_shards(wildcards)})


def embed_gpus(wildcards):
    return 0 if backbone_features(config, wildcards.backbone)["device"] == "cpu" else 1


def lane_flags(wildcards):
    return [
        layout.flag_path(wildcards.backbone, wildcards.dataset, lane)
        for lane in LANES[(wildcards.backbone, wildcards.dataset)]
    ]


def probe_settings(family):
    settings = dict(config["probes"].get(family, {}))
    settings.pop("enabled", None)
    return settings


def probe_outputs():
    return [layout.probe_json(b, d, family) for b in BACKBONES for d in DATASETS for family in PROBES_OF[b]]


def final_outputs():
    """Everything the workflow writes, so that any output deleted by hand is made again."""
    shards = [layout.shard_path(d, s) for d in DATASETS for s in SHARDS[d]]
    metas = [layout.meta_path(d) for d in DATASETS]
    flags = [layout.flag_path(b, d, lane) for (b, d), named in LANES.items() for lane in named]
    checked = [layout.checked_path(b, d) for b in BACKBONES for d in DATASETS]
    probes = [path for p in probe_outputs() for path in (p, layout.predictions_path(p), layout.heads_path(p))]
    return shards + metas + flags + checked + [str(p) for p in probes] + list(rules.report.output)


def report_figure(name, category, subcategory=None, **labels):
    """results/report/plots/{name}.png registered for `snakemake --report`, captioned by
    workflow/report/{figure}.rst (the name's first part)."""
    figure = name.split("/")[0]
    return report(
        f"{layout.REPORT_DIR}/plots/{name}.png",
        caption=f"../report/{figure}.rst",
        category=category,
        subcategory=subcategory,
        labels={"figure": figure.replace("_", " ")} | labels,
    )


def report_figures():
    """Every figure of the report: one per probe family or per dataset, each short enough
    for a browser window."""
    figures = {
        f"accuracy_per_block/{p}": report_figure(f"accuracy_per_block/{p}", "2. Accuracy", "per block", probe=p)
        for p in PROBES
    }
    if "fewshot" in PROBES:
        figures["fewshot"] = report_figure("fewshot", "2. Accuracy", "few-shot")
    for d in DATASETS:
        figures[f"probe_comparison/{d}"] = report_figure(f"probe_comparison/{d}", "2. Accuracy", "per probe", dataset=d)
        figures[f"training_curves/{d}"] = report_figure(f"training_curves/{d}", "3. Training", dataset=d)
        for name, title in (("confusion_matrix", "confusion matrix"), ("feature_map", "feature map")):
            figures[f"{name}/{d}"] = report_figure(f"{name}/{d}", "4. Errors and features", title, dataset=d)
    figures |= {f"{name}.svg": f"{layout.REPORT_DIR}/plots/{name}.svg" for name in list(figures)}
    return {"".join(c if c.isalnum() else "_" for c in name): path for name, path in figures.items()}
