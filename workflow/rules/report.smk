report: "../report/workflow.rst"


rule report:
    input:
        metrics=probe_outputs(),
        stores=expand(layout.checked_path("{backbone}", "{dataset}"), backbone=BACKBONES, dataset=DATASETS),
    output:
        **report_figures(),
        table=report(f"{layout.REPORT_DIR}/metrics.csv", caption="../report/metrics_csv.rst", category="4. Tables"),
        summary=report(f"{layout.REPORT_DIR}/metrics.md", caption="../report/metrics_md.rst", category="4. Tables"),
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
