report: "../report/workflow.rst"


rule report:
    input:
        metrics=probe_outputs(),
        stores=expand(layout.checked_path("{backbone}", "{dataset}"), backbone=BACKBONES, dataset=DATASETS),
    output:
        **report_figures(),
        headline_html=report(
            f"{layout.REPORT_DIR}/headline.html", caption="../report/headline_html.rst", category="1. Tables"
        ),
        per_block_html=report(
            f"{layout.REPORT_DIR}/per_block.html", caption="../report/per_block_html.rst", category="1. Tables"
        ),
        table=report(f"{layout.REPORT_DIR}/metrics.csv", caption="../report/metrics_csv.rst", category="1. Tables"),
        summary=report(f"{layout.REPORT_DIR}/metrics.md", caption="../report/metrics_md.rst", category="1. Tables"),
        headline=f"{layout.REPORT_DIR}/headline.txt",
    log:
        "logs/report/report.log",
    conda:
        "../../envs/mimprobe.yaml"
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.table),
        embeddings=lambda wildcards, input: os.path.dirname(os.path.dirname(input.stores[0])),
        code=CODE["report"],
    shell:
        "mimprobe report --out-dir {params.out_dir:q} --embeddings {params.embeddings:q} {input.metrics:q}"
        " > {log:q} 2>&1"
