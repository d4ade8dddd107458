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


def report_figure(name, category, subcategory=None, **labels):
    """results/report/plots/{name}.png registered for `snakemake --report`, captioned by
    workflow/report/{figure}.rst (the name's first part)."""
    figure = name.split("/")[0]
    return report(
        f"results/report/plots/{name}.png",
        caption=f"../report/{figure}.rst",
        category=category,
        subcategory=subcategory,
        labels={"figure": figure.replace("_", " ")} | labels,
    )


def report_figures():
    """Every figure the report rule writes: one per probe family or per dataset, each short enough
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
    figures |= {f"{name}.svg": f"results/report/plots/{name}.svg" for name in list(figures)}
    return {"".join(c if c.isalnum() else "_" for c in name): path for name, path in figures.items()}
