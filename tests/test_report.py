"""The report: every figure and table from a finished study, the HTML report, and new probe families."""

import base64
import json
import re

import pandas as pd
import pytest

from mimprobe.report import best_per_family, build_table, write_report
from study_run import finished_study

PLOTS = ["accuracy_per_block", "probe_comparison", "training_curves", "confusion_matrix", "feature_map"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return finished_study(tmp_path_factory)


@pytest.mark.slow
def test_the_run_writes_every_plot_as_png_and_svg(study):
    plots = study / "results/report/plots"
    for name in PLOTS:
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (plots / f"{name}.png").stat().st_size > 10_000
        assert "<svg" in (plots / f"{name}.svg").read_text()[:1000]
    assert not (plots / "fewshot.png").exists()  # no few-shot probe in this study: skipped cleanly


@pytest.mark.slow
def test_the_html_report_embeds_every_plot_and_table(study):
    html = (study / "results/report/report.html").read_text()
    for name in PLOTS:
        assert f"{name}.png" in html
    images = re.findall(r"data:image/png;[^,\"]*base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) >= len(PLOTS)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "metrics.csv" in html and "metrics.md" in html
    assert "most-confused class pairs are named" in html  # a figure's caption
    assert "measures the frozen features of vision backbones" in html  # the workflow description


@pytest.mark.slow
def test_the_summary_names_best_settings_and_most_confused_pairs(study):
    summary = (study / "results/report/metrics.md").read_text()
    table = pd.read_csv(study / "results/report/metrics.csv")
    assert set(table.dataset) == {"digits", "pets"}
    for dataset in ("digits", "pets"):
        assert f"## {dataset}: best setting per probe and backbone" in summary
        assert f"### {dataset}: most-confused class pairs" in summary
    best = best_per_family(table)
    assert len(best) == 2 * 2 * 2  # datasets x backbones x probes
    row = best[(best.dataset == "pets") & (best.backbone == "pixels") & (best.probe == "knn")].iloc[0]
    assert f"| pixels | knn | 0 | flat | {row.setting} |" in summary


def _payload(probe, backbone, records):
    return {"backbone": backbone, "dataset": "toy", "probe": probe, "params": {}, "seed": 0,
            "class_names": ["a", "b"], "results": records}


def _record(block, setting, validation, test, history=()):
    return {"block": block, "pooling": "cls", "setting": setting, "chosen": {}, "validation": validation,
            "test": {m: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05} for m, v in test.items()},
            "history": list(history)}


def test_new_probe_families_appear_without_report_changes(tmp_path):
    """Few-shot (a record per shot count), k-means (acc, no validation) and an unknown family."""
    payloads = [
        _payload("linear", "vit", [_record(1, "lr=0.1", {"lr=0.1": 0.7, "lr=0.01": 0.6}, {"top1": 0.68}),
                                   _record(2, "lr=0.01", {"lr=0.1": 0.8, "lr=0.01": 0.9}, {"top1": 0.85},
                                           [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1,
                                             "train_top1": 0.5, "val_top1": 0.45}])]),
        _payload("fewshot", "vit", [_record(b, f"shots={s}", {}, {"top1": 0.1 * s + 0.01 * b})
                                    for b in (1, 2) for s in (1, 2, 5)]),
        _payload("kmeans", "vit", [_record(b, "k=2", {}, {"acc": 0.5 + 0.1 * b, "nmi": 0.3, "ami": 0.2,
                                                          "ari": 0.1}) for b in (1, 2)]),
        _payload("brandnew", "vit", [_record(2, "x=1", {"x=1": 0.4}, {"top1": 0.42})]),
    ]
    paths = []
    for payload in payloads:
        paths.append(tmp_path / f"{payload['probe']}.json")
        paths[-1].write_text(json.dumps(payload))
    write_report(paths, tmp_path / "report", tmp_path / "no-embeddings")
    best = best_per_family(build_table(paths)).set_index("probe")
    assert (best.loc["linear", "block"], best.loc["linear", "setting"]) == (2, "lr=0.01")  # by validation
    assert (best.loc["kmeans", "metric"], best.loc["kmeans", "block"]) == ("acc", 2)  # deepest, no validation
    assert best.loc["fewshot", "setting"] == "shots=5"  # natural order: the most shots
    summary = (tmp_path / "report/metrics.md").read_text()
    assert "| vit | brandnew | 2 | cls | x=1 | 40.0 | top1 42.0 |" in summary
    assert "| vit | kmeans | 2 | cls | k=2 (deepest block; no validation) |  | acc 70.0 |" in summary
    assert "nmi 30.0, ami 20.0, ari 10.0" in summary
    assert "### toy: fewshot test % per setting" in summary and "| shots=1 | shots=2 | shots=5 |" in summary
    for name in PLOTS + ["fewshot"]:
        assert (tmp_path / "report/plots" / f"{name}.png").is_file()
