report: "../report/workflow.rst"


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
        "accuracy_per_block": report_figure("accuracy_per_block", "1. Accuracy", "per block"),
        "probe_comparison": report_figure("probe_comparison", "1. Accuracy", "per probe family"),
        "training_curves": report_figure("training_curves", "2. Training"),
        "confusion_matrix": report_figure("confusion_matrix", "3. Errors and features"),
        "feature_map": report_figure("feature_map", "3. Errors and features"),
    }
    if "fewshot" in PROBES:
        figures["fewshot"] = report_figure("fewshot", "1. Accuracy", "few-shot")
    figures |= {f"{name}_svg": f"results/report/plots/{name}.svg" for name in list(figures)}
    return figures


rule report:
    input:
        metrics=probe_outputs(),
        stores=expand("results/embeddings/{backbone}/{dataset}.ok.json", backbone=BACKBONES, dataset=DATASETS),
    output:
        table=report("results/report/metrics.csv", caption="../report/metrics_csv.rst", category="4. Tables"),
        summary=report("results/report/metrics.md", caption="../report/metrics_md.rst", category="4. Tables"),
        **report_figures(),
    log:
        "logs/report/report.log",
    shell:
        "mimprobe report --out-dir results/report --embeddings results/embeddings {input.metrics} > {log} 2>&1"
