"""Every file of results/report/: metrics.csv, the figures, the tables (Markdown, HTML, text)."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_path
from ..layout import EMBEDDINGS
from . import maps, plots
from .html import render_page
from .markdown import render_markdown
from .table import table_from_payloads, write_csv
from .tables import report_tables
from .text import render_headline

PER_DATASET = ("probe_comparison", "training_curves", "confusion_matrix", "feature_map")
INTRO = ("Every probe chose its block, pooling and hyper-parameters on a validation split carved from train; "
         "the test split was scored once. The full table: metrics.csv.")


def figure_paths(plots_dir: Path, probes, datasets, fewshot: bool) -> dict[str, Path]:
    """Every figure file (PNG; an SVG beside each), as the report rule declares them."""
    paths = {f"accuracy_per_block/{p}": plots_dir / "accuracy_per_block" / f"{p}.png" for p in probes}
    for figure in PER_DATASET:
        paths |= {f"{figure}/{d}": plots_dir / figure / f"{d}.png" for d in datasets}
    return paths | ({"fewshot": plots_dir / "fewshot.png"} if fewshot else {})


def draw_all(table, payloads: list[dict], probe_jsons: list[Path], embeddings: Path, plots_dir: Path) -> dict:
    """Every figure into plots_dir; returns the most-confused class pairs per dataset for the tables."""
    jsons = {(p["dataset"], p["backbone"], p["probe"]): path for p, path in zip(payloads, probe_jsons)}
    class_names = {p["dataset"]: p["class_names"] for p in payloads}
    classes = {dataset: len(names) for dataset, names in class_names.items()}
    colours = plots.backbone_colours({p["backbone"] for p in payloads})
    probes = sorted({p["probe"] for p in payloads})
    paths = figure_paths(plots_dir, probes, sorted(class_names), plots.FEWSHOT in probes)
    for probe in probes:
        plots.plot_accuracy_per_block(table, probe, classes, colours, paths[f"accuracy_per_block/{probe}"])
    if plots.FEWSHOT in probes:
        plots.plot_fewshot(table, classes, colours, paths["fewshot"])
    confused = {}
    for dataset, names in sorted(class_names.items()):
        plots.plot_probe_comparison(table, dataset, classes[dataset], colours, paths[f"probe_comparison/{dataset}"])
        plots.plot_training_curves([p for p in payloads if p["dataset"] == dataset], classes, colours,
                                   paths[f"training_curves/{dataset}"])
        pairs = maps.plot_confusion(table, dataset, jsons, names, paths[f"confusion_matrix/{dataset}"])
        if pairs:
            confused[dataset] = pairs
        maps.plot_feature_map(table, dataset, embeddings, names, paths[f"feature_map/{dataset}"])
    return confused


def write_report(probe_jsons, out_dir, embeddings_dir=EMBEDDINGS):
    """metrics.csv, the figures, metrics.md, headline.html, per_block.html and headline.txt in out_dir."""
    out_dir, paths = Path(out_dir), [Path(p) for p in probe_jsons]
    payloads = [json.loads(path.read_text()) for path in paths]
    table = table_from_payloads(payloads, embeddings_dir)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        write_csv(table, tmp)
    confused = draw_all(table, payloads, paths, Path(embeddings_dir), out_dir / "plots")
    sections = report_tables(table, confused)
    skipped = [f"{p['probe']} on {p['backbone']}/{p['dataset']}" for p in payloads if not p["results"]]
    note = f"Probe jobs without results (no stored array they read), skipped: {', '.join(skipped)}." if skipped else ""
    pages = {
        "metrics.md": render_markdown(sections, note),
        "headline.html": render_page("mimprobe: headline results", f"{INTRO} {note}".strip(),
                                     {d: s["headline"] + s["errors"] for d, s in sections.items()}),
        "per_block.html": render_page("mimprobe: test accuracy per block", INTRO,
                                      {d: s["per_block"] for d, s in sections.items()}),
        "headline.txt": render_headline(sections),
    }
    for name, text in pages.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return table

