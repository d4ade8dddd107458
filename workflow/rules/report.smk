report: "../report/workflow.rst"


rule report:
    input:
        metrics=probe_outputs(),
        stores=expand("results/embeddings/{backbone}/{dataset}.ok.json", backbone=BACKBONES, dataset=DATASETS),
    output:
        headline_html=report("results/report/headline.html", caption="../report/headline_html.rst", category="1. Tables"),
        per_block_html=report("results/report/per_block.html", caption="../report/per_block_html.rst", category="1. Tables"),
        table=report("results/report/metrics.csv", caption="../report/metrics_csv.rst", category="1. Tables"),
        summary=report("results/report/metrics.md", caption="../report/metrics_md.rst", category="1. Tables"),
        headline="results/report/headline.txt",
        **report_figures(),
    conda:
        "../../envs/mimprobe.yaml"
    log:
        "logs/report/report.log",
    shell:
        "mimprobe report --out-dir results/report --embeddings results/embeddings {input.metrics} > {log} 2>&1"
