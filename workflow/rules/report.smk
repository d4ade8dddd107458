report: "../report/workflow.rst"


rule report:
    input:
        metrics=probe_outputs(),
        stores=expand("results/embeddings/{backbone}/{dataset}.ok.json", backbone=BACKBONES, dataset=DATASETS),
    output:
        table=report("results/report/metrics.csv", caption="../report/metrics_csv.rst", category="4. Tables"),
        summary=report("results/report/metrics.md", caption="../report/metrics_md.rst", category="4. Tables"),
        **report_figures(),
    conda:
        "../../envs/mimprobe.yaml"
    log:
        "logs/report/report.log",
    shell:
        "mimprobe report --out-dir results/report --embeddings results/embeddings {input.metrics} > {log} 2>&1"
