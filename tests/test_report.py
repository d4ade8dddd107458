"""The report: one rule for "the best record", tables and figures that tell the truth, the HTML
report and the headline printed at the end of a run."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from study_run import finished_study, first_run_output

from mimprobe.cli import main
from mimprobe.predict import Run, choose_record
from mimprobe.report.maps import tsne_map
from mimprobe.report.plots import backbone_colours, depth_panel, pyplot, training_curves_figure
from mimprobe.report.table import best_by_comparison, best_rows, build_table, per_block_rows, select_best
from mimprobe.report.write import write_report

# the study's figures: one per probe family, or one per dataset
PLOTS = ["accuracy_per_block/knn", "accuracy_per_block/linear"] + [
    f"{figure}/{dataset}" for figure in ("probe_comparison", "training_curves", "confusion_matrix", "feature_map")
    for dataset in ("digits", "pets")]


def _payload(probe, backbone, records, model=None, block_count=None, classes=4):
    payload = {"backbone": backbone, "dataset": "toy", "probe": probe, "params": {}, "seed": 0,
               "class_names": [f"c{i}" for i in range(classes)], "results": records}
    return payload | ({"model": model, "block_count": block_count} if model else {})


def _record(block, setting, validation, test, pooling="cls", history=(), feature_blocks=None):
    record = {"block": block, "pooling": pooling, "setting": setting, "chosen": {}, "validation": validation,
              "test": {m: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05} for m, v in test.items()},
              "history": list(history)}
    if feature_blocks:
        record["feature_set"] = {"blocks": feature_blocks, "poolings": ["cls"] * len(feature_blocks)}
    return record


def _write(tmp_path, payloads):
    paths = []
    for payload in payloads:
        paths.append(tmp_path / f"{payload['backbone']}-{payload['probe']}.json")
        paths[-1].write_text(json.dumps(payload))
    return paths


# One selection rule ------------------------------------------------------------------------------

def test_select_best_prefers_validation_then_the_deepest_block_then_cls_then_the_last_setting():
    tied = [_record(10, "k=5", {"k=5": 0.8}, {"top1": 0.7}), _record(11, "k=5", {"k=5": 0.8}, {"top1": 0.7}, "mean"),
            _record(11, "k=5", {"k=5": 0.8}, {"top1": 0.7}), _record(11, "k=10", {"k=10": 0.8}, {"top1": 0.7})]
    assert select_best(tied) is tied[3]  # block 11, cls, and k=10 after k=5 in natural order
    assert select_best(tied[:3]) is tied[2]  # cls before mean
    assert select_best(tied[:2]) is tied[1]  # the deeper block, whatever its pooling
    better = _record(0, "k=5", {"k=5": 0.81}, {"top1": 0.1}, "mean")
    assert select_best(tied + [better]) is better  # validation first; test never looked at


def test_a_family_without_records_has_no_best():
    assert select_best([]) is None
    assert best_by_comparison("attentive", []) == {}


def test_few_shot_is_compared_at_equal_shots():
    records = [_record(b, f"shots={s}", {f"shots={s}": v}, {"top1": v})
               for b, s, v in ((1, 1, 0.3), (2, 1, 0.2), (1, 10, 0.6), (2, 10, 0.7), (2, 2, 0.4))]
    best = best_by_comparison("fewshot", records)
    assert list(best) == ["fewshot 1-shot", "fewshot 2-shot", "fewshot 10-shot"]
    assert (best["fewshot 1-shot"]["block"], best["fewshot 10-shot"]["block"]) == (1, 2)


def test_predict_and_the_report_choose_the_same_record(tmp_path):
    """Tied validation: both take the deepest block, although the JSON lists the shallower first."""
    records = [_record(10, "lr=0.1", {"lr=0.1": 0.9}, {"top1": 0.8}),
               _record(11, "lr=0.1", {"lr=0.1": 0.9}, {"top1": 0.7})]
    payload = _payload("linear", "vit", records)
    run = Run(tmp_path, "vit", "toy", "linear", payload, {"class_names": payload["class_names"]})
    chosen = choose_record(run, None, None)
    reported = best_rows(build_table(_write(tmp_path, [payload]))).iloc[0]
    assert chosen["block"] == reported.block == 11
    assert choose_record(run, 10, None) is records[0]


# Tables --------------------------------------------------------------------------------------------

def _study_payloads():
    """A 12-block ViT (random init), a 6-block CNN and raw pixels; linear with grid records, few-shot, k-means."""
    vit, cnn = "random:vit_tiny_patch16_224", "timm:cnn"
    history = [{"epoch": e, "train_loss": 250 / e, "val_loss": 260 / e, "train_top1": 0.1 * e, "val_top1": 0.09 * e}
               for e in range(1, 4)]
    return [
        _payload("linear", "vit", [_record(10, "lr=0.1", {"lr=0.1": 0.5}, {"top1": 0.45}),
                                   _record(11, "lr=0.1", {"lr=0.1": 0.6}, {"top1": 0.55}),
                                   _record(11, "blocks=1,lr=0.1", {"blocks=1,lr=0.1": 0.61}, {"top1": 0.56},
                                           "cls+mean", feature_blocks=[11, 11]),
                                   _record(11, "blocks=4,lr=0.1", {"blocks=4,lr=0.1": 0.58}, {"top1": 0.57},
                                           "cls4", feature_blocks=[8, 9, 10, 11])], vit, 12),
        _payload("linear", "cnn", [_record(4, "lr=0.01", {"lr=0.01": 0.8}, {"top1": 0.78}, "mean", history),
                                   _record(5, "lr=0.01", {"lr=0.01": 0.7}, {"top1": 0.69}, "mean")], cnn, 6),
        _payload("linear", "pixels", [_record(0, "lr=0.1", {"lr=0.1": 0.3}, {"top1": 0.31}, "flat")], "pixels", 1),
        _payload("fewshot", "cnn", [_record(b, f"shots={s}", {f"shots={s}": 0.1 * s + 0.01 * b}, {"top1": 0.1 * s})
                                    for b in (4, 5) for s in (1, 2, 5)], cnn, 6),
        _payload("fewshot", "vit", [_record(11, f"shots={s}", {f"shots={s}": 0.05 * s}, {"top1": 0.05 * s})
                                    for s in (1, 2, 5)], vit, 12),
        _payload("kmeans", "cnn", [_record(b, "k=4", {}, {"acc": 0.4 + 0.1 * b, "nmi": 0.3}) for b in (4, 5)], cnn, 6),
        _payload("attentive", "cnn", [], cnn, 6),  # no token grid stored: no records
    ]


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    paths = _write(tmp, _study_payloads())
    write_report(paths, tmp / "report", tmp / "no-embeddings")
    return tmp / "report", paths


def test_the_headline_compares_few_shot_once_per_shot_count_and_marks_baselines(toy_report):
    report, _ = toy_report
    summary = (report / "metrics.md").read_text()
    assert "| probe | cnn | pixels (raw pixels) | vit (random init) |" in summary
    assert "| fewshot 1-shot | **10.0 (5.0–15.0)** |  | 5.0 (0.0–10.0) |" in summary
    assert "| fewshot 5-shot | **50.0 (45.0–55.0)** |  | 25.0 (20.0–30.0) |" in summary
    assert "| kmeans (acc) | 90.0 (85.0–95.0) |  |  |" in summary
    # the vit's linear probe chose the last block's cls+mean on validation (0.61)
    assert "| vit | linear | 11 (1.00) | cls+mean (block 11) | blocks=1,lr=0.1 | 61.0 | 56.0 (51.0–61.0) |" in summary
    assert "| cnn | kmeans (acc) | 5 (1.00) | cls | k=4 | none | 90.0 (85.0–95.0) | nmi 30.0 |" in summary
    assert "| backbone | 1-shot | 2-shot | 5-shot |" in summary
    assert "skipped: attentive on cnn/toy" in summary


def test_per_block_tables_are_per_backbone_in_depth_order(toy_report):
    report, _ = toy_report
    summary = (report / "metrics.md").read_text()
    assert "### toy · cnn: test % per block (6 blocks)" in summary
    assert "| probe | pooling | b4 (0.83) | b5 (1.00) |" in summary
    assert "| linear | mean | **78.0** | 69.0 |" in summary  # the best block of the row in bold
    assert "| probe | pooling | b10 (0.92) | b11 (1.00) |" in summary
    assert "| linear | cls4 (combines blocks 8-11) |  | 57.0 |" in summary
    page = (report / "per_block.html").read_text()
    assert '<td class="num best">78.0</td>' in page and "<th>b11 (1.00)</th>" in page


def test_the_headline_text_is_a_table_for_the_terminal_and_the_landing_page(toy_report):
    from docutils.core import publish_parts

    report, _ = toy_report
    text = (report / "headline.txt").read_text()
    assert re.search(r"^linear\s+78\.0 \(73\.0–83\.0\)\s+31\.0 \(26\.0–36\.0\)\s+56\.0 \(51\.0–61\.0\)$", text, re.M)
    html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2})["body"]
    assert html.count("<table") == 1 and "<td>78.0 (73.0–83.0)</td>" in html


def test_metrics_csv_keeps_its_columns_order_and_number_format(tmp_path):
    record = _record(2, "k=10", {"k=5": 0.8, "k=10": 0.85}, {})
    record["test"] = {"top1": {"value": 0.82, "ci_low": 0.75, "ci_high": 0.875}}
    paths = _write(tmp_path, [_payload("knn", "vit", [record])])
    write_report(paths, tmp_path / "report", tmp_path / "none")
    assert (tmp_path / "report/metrics.csv").read_text().splitlines() == [
        "backbone,dataset,block,pooling,probe,setting,split,metric,value,ci_low,ci_high",
        "vit,toy,2,cls,knn,k=10,test,top1,0.82,0.75,0.875",
        "vit,toy,2,cls,knn,k=10,val,top1,0.85,,",
        "vit,toy,2,cls,knn,k=5,val,top1,0.8,,",
    ]


# Figures -------------------------------------------------------------------------------------------

def test_accuracy_per_block_uses_relative_depth_real_baselines_and_a_chance_line(toy_report):
    _, paths = toy_report
    rows = per_block_rows(build_table(paths))
    rows = rows[rows.probe == "linear"]
    fig, ax = pyplot().subplots()
    depth_panel(ax, rows, backbone_colours(rows.backbone.unique()), classes=4)
    curves = {c.get_label(): c.lines[0] for c in ax.containers if c.get_label() and not c.get_label().startswith("_")}
    assert list(curves["cnn mean"].get_xdata()) == pytest.approx([5 / 6, 1.0])
    assert list(curves["vit cls (random init)"].get_xdata()) == pytest.approx([11 / 12, 1.0])
    assert curves["vit cls (random init)"].get_markerfacecolor() == "white"  # a baseline, marked by its kind
    levels = {line.get_label(): line.get_ydata()[0] for line in ax.lines if list(line.get_xdata()) == [0, 1]}
    assert levels == {"pixels flat (raw pixels)": pytest.approx(31.0), "chance (1/4)": pytest.approx(25.0)}
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[-2:] == ["cls+mean", "cls4"] and "1.00" in ticks
    stars = [c.lines[0].get_xdata()[0] for c in ax.containers if c.lines[0].get_marker() == "*"]
    assert len(stars) == 2 and min(stars) > 1.0  # combinations right of the depth axis, not baselines
    pyplot().close(fig)


def test_training_curves_put_losses_on_a_log_axis_and_legends_outside_the_data():
    payloads = [p for p in _study_payloads() if p["probe"] == "linear"]
    fig = training_curves_figure(payloads, {"toy": 4}, backbone_colours(["cnn", "pixels", "vit"]))
    loss_ax, acc_ax = fig.axes[:2]
    assert loss_ax.get_yscale() == "log"
    fig.canvas.draw()
    legend = acc_ax.get_legend()
    assert legend.get_window_extent().x0 >= acc_ax.get_window_extent().x1
    assert "cnn\nb4 mean lr=0.01" in [t.get_text() for t in legend.get_texts()]
    pyplot().close(fig)


def test_the_feature_map_separates_classes_and_measures_its_trustworthiness():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (3, 64))
    features = np.concatenate([c + rng.normal(0, 1, (100, 64)) for c in centres])
    points, trust, neighbours = tsne_map(features, seed=0)
    assert points.shape == (300, 2) and neighbours == 10
    assert trust > 0.9
    centroids = np.stack([points[i * 100:(i + 1) * 100].mean(0) for i in range(3)])
    spread = max(points[i * 100:(i + 1) * 100].std(0).max() for i in range(3))
    assert min(np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i)) > 2 * spread
    again, _, _ = tsne_map(features, seed=0)
    np.testing.assert_allclose(points, again)  # seeded


# The finished study ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return finished_study(tmp_path_factory)


@pytest.mark.slow
def test_the_run_writes_every_plot_and_table(study):
    report = study / "results/report"
    for name in PLOTS:
        assert (report / f"plots/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (report / f"plots/{name}.png").stat().st_size > 10_000
        assert "<svg" in (report / f"plots/{name}.svg").read_text()[:1000]
    assert not (report / "plots/fewshot.png").exists()  # no few-shot probe in this study: none declared
    assert sorted(p.relative_to(report / "plots").as_posix() for p in report.glob("plots/**/*.png")) == sorted(
        f"{name}.png" for name in PLOTS)
    for name in ("headline.html", "per_block.html"):
        assert (report / name).read_text().startswith("<!DOCTYPE html>")


@pytest.mark.slow
def test_the_html_report_embeds_every_figure_and_the_tables_as_html(study):
    html = (study / "results/report/report.html").read_text()
    images = re.findall(r"data:image/png;[^,\"]*base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) >= len(PLOTS)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    pages = [base64.b64decode(d).decode() for d in re.findall(r"data:text/html;[^,\"]*base64,([A-Za-z0-9+/=]+)", html)]
    assert any("digits: test % per probe and backbone" in page for page in pages)
    assert any("test % per block" in page for page in pages)
    assert "metrics.csv" in html and "most-confused class pairs are named" in html
    assert "measures the frozen features of vision backbones" in html  # the workflow description


@pytest.mark.slow
def test_every_run_ends_with_the_headline_even_when_nothing_was_done(study):
    from conftest import run_snakemake
    from study_run import study_config

    headline = (study / "results/report/headline.txt").read_text().strip()
    assert "mimprobe headline" in first_run_output() and headline in first_run_output()
    again = run_snakemake(study, study_config(study / "pets"))
    assert "Nothing to be done" in again.stderr + again.stdout
    assert headline in again.stdout


@pytest.mark.slow
def test_a_probe_without_records_says_so_in_one_line_and_the_report_skips_it(study, tmp_path, capsys):
    out = tmp_path / "attentive.json"
    code = main(["probe", "attentive", "--store", str(study / "results/embeddings/pixels/digits.zarr"),
                 "--meta", str(study / "results/shards/digits/meta.json"), "--out", str(out),
                 "--backbone", "pixels", "--dataset", "digits"])
    printed = capsys.readouterr().out
    assert code == 0 and json.loads(out.read_text())["results"] == []
    assert printed == ("attentive on pixels/digits: no results: no stored array has a pooling this family reads "
                       "(tokens); the report skips it\n")
    jsons = sorted((study / "results/probes").glob("*/*/*.json"))
    write_report(jsons + [out], tmp_path / "report", study / "results/embeddings")
    assert (tmp_path / "report/metrics.csv").read_bytes() == (study / "results/report/metrics.csv").read_bytes()
    assert "skipped: attentive on pixels/digits" in (tmp_path / "report/metrics.md").read_text()


@pytest.mark.slow
def test_the_summary_names_best_settings_and_most_confused_pairs(study):
    summary = (study / "results/report/metrics.md").read_text()
    table = pd.read_csv(study / "results/report/metrics.csv")
    assert set(table.dataset) == {"digits", "pets"}
    for dataset in ("digits", "pets"):
        assert f"### {dataset}: chosen block, pooling and setting" in summary
        assert f"### {dataset}: most-confused class pairs" in summary
    best = best_rows(build_table(sorted((study / "results/probes").glob("*/*/*.json")), study / "results/embeddings"))
    assert len(best) == 2 * 2 * 2  # datasets x backbones x probes
    row = best[(best.dataset == "pets") & (best.backbone == "pixels") & (best.probe == "knn")].iloc[0]
    assert f"| pixels | knn | 0 (1.00) | flat | {row.setting} |" in summary
    attrs = json.loads((study / "results/embeddings/tiny_vit/digits.zarr/zarr.json").read_text())["attributes"]
    vit = best[best.backbone == "tiny_vit"]
    assert set(vit.block_count) == {attrs["block_count"]} and set(vit.baseline) == {"random init"}  # store attrs
    assert list(vit.depth) == [(block + 1) / attrs["block_count"] for block in vit.block]
