"""The HTML report in a real browser: the headline numbers are on the page a reader lands on."""

import pandas as pd
import pytest
from browser import chromium, rendered_dom
from study_run import finished_study

from mimprobe.report.table import best_rows, build_table

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium), "
                                                            "so the HTML report cannot be rendered")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return finished_study(tmp_path_factory)


def test_the_landing_page_shows_every_headline_number_from_metrics_csv(study, tmp_path):
    report = study / "results/report"
    dom = rendered_dom(report / "report.html", tmp_path / "profile")
    csv = pd.read_csv(report / "metrics.csv")
    best = best_rows(build_table(sorted((study / "results/probes").glob("*/*/*.json")), study / "results/embeddings"))
    assert len(best) == 8
    for row in best.itertuples():
        test = csv[(csv.dataset == row.dataset) & (csv.backbone == row.backbone) & (csv.probe == row.probe)
                   & (csv.block == row.block) & (csv.pooling == row.pooling) & (csv.setting == row.setting)
                   & (csv.split == "test") & (csv.metric == "top1")].iloc[0]
        cell = f"{100 * test.value:.1f} ({100 * test.ci_low:.1f}–{100 * test.ci_high:.1f})"
        assert f"<td>{cell}</td>" in dom, cell
    for dataset in ("digits", "pets"):
        assert f"{dataset}: test % per probe and backbone" in dom
