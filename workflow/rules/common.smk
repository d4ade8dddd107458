import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from mimprobe.config import backbone_features, shard_names, validate_config
from mimprobe.errors import ConfigError
from mimprobe.probes import enabled_families

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}") from None

# Image folders are checked image by image (headers only) before any job runs; cluster jobs,
# which re-read this file, skip it.
for _name, _dataset in config["datasets"].items():
    if _dataset["kind"] == "imagefolder" and workflow.is_main_process:
        from mimprobe.errors import DataError
        from mimprobe.imagefolder import check_image_folder

        try:
            check_image_folder(_dataset["root"])
        except DataError as err:
            raise WorkflowError(f"Dataset {_name} (config key datasets.{_name}.root): {err}") from None

DATASETS = list(config["datasets"])
BACKBONES = list(config["backbones"])
SHARDS = {name: shard_names(dataset) for name, dataset in config["datasets"].items()}
PROBES = enabled_families(config)


wildcard_constraints:
    dataset="|".join(DATASETS) or "none",
    backbone="|".join(BACKBONES) or "none",
    shard=r"(train|test)-\d{4}",


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
    return as_json(backbone_features(config, wildcards.backbone))


def probe_settings(family):
    settings = dict(config["probes"].get(family, {}))
    settings.pop("enabled", None)
    return settings


def batch_size(wildcards):
    return config["backbones"][wildcards.backbone]["batch_size"]


def chunk_flags(wildcards):
    return expand(
        "results/embeddings/{backbone}/{dataset}.chunks/{shard}.json",
        backbone=wildcards.backbone,
        dataset=wildcards.dataset,
        shard=SHARDS[wildcards.dataset],
    )


def probe_outputs():
    return expand(
        "results/probes/{backbone}/{dataset}/{family}.json",
        backbone=BACKBONES,
        dataset=DATASETS,
        family=PROBES,
    )


def final_outputs():
    return list(rules.report.output)  # the table, the summary and every plot


def report_figure(name, category, subcategory=None):
    """A figure registered for `snakemake --report`, its caption in workflow/report/{name}.rst."""
    return report(
        f"results/report/plots/{name}.png",
        caption=f"../report/{name}.rst",
        category=category,
        subcategory=subcategory,
        labels={"figure": name.replace("_", " ")},
    )


def report_figures():
    figures = {
        "accuracy_per_block": report_figure("accuracy_per_block", "2. Accuracy", "per block"),
        "probe_comparison": report_figure("probe_comparison", "2. Accuracy", "per probe"),
        "training_curves": report_figure("training_curves", "3. Training"),
        "confusion_matrix": report_figure("confusion_matrix", "4. Errors and features"),
        "feature_map": report_figure("feature_map", "4. Errors and features"),
    }
    if "fewshot" in PROBES:
        figures["fewshot"] = report_figure("fewshot", "2. Accuracy", "few-shot")
    figures |= {f"{name}_svg": f"results/report/plots/{name}.svg" for name in list(figures)}
    return figures
