# One rule per probe family (probe_knn, probe_linear, ...), all running `mimprobe probe <family>`.
for family in PROBES:

    rule:
        name:
            f"probe_{family}"
        input:
            ok=layout.checked_path("{backbone}", "{dataset}"),
            meta=layout.meta_path("{dataset}"),
        output:
            metrics=layout.probe_json("{backbone}", "{dataset}", family),
            predictions=layout.predictions_path(layout.probe_json("{backbone}", "{dataset}", family)),
            heads=layout.heads_path(layout.probe_json("{backbone}", "{dataset}", family)),
        log:
            f"logs/probe_{family}/{{backbone}}/{{dataset}}.log",
        benchmark:
            f"benchmarks/probe_{family}/{{backbone}}/{{dataset}}.tsv"
        conda:
            "../../envs/mimprobe.yaml"
        params:
            family=family,
            store_path=lambda wildcards: layout.store_path(wildcards.backbone, wildcards.dataset),
            probe=as_json(probe_settings(family)),
            seed=config["seed"],
            bootstrap=config["report"]["bootstrap"],
            code=CODE[family],
        shell:
            "mimprobe probe {params.family} --store {params.store_path:q} --meta {input.meta:q}"
            " --out {output.metrics:q} --params {params.probe:q} --seed {params.seed}"
            " --bootstrap {params.bootstrap} --backbone {wildcards.backbone:q}"
            " --dataset {wildcards.dataset:q} --verified {input.ok:q} > {log:q} 2>&1"
