# One rule per probe family (probe_knn, probe_linear, ...), all running `mimprobe probe <family>`.
# A GPU is asked for only where probes.device names one (auto computes on a GPU only if the job has one).
PROBE_RESOURCES = {"gpu": 1} if config["probes"]["device"].startswith("cuda") else {}

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
        threads: config["probes"]["threads"]
        resources:
            **PROBE_RESOURCES,
        params:
            family=family,
            store_path=lambda wildcards: layout.store_path(wildcards.backbone, wildcards.dataset),
            probe=as_json(probe_settings(family)),
            seed=config["seed"],
            bootstrap=config["report"]["bootstrap"],
            device=config["probes"]["device"],
            code=CODE[family],
        shell:
            "mimprobe probe {params.family} --store {params.store_path:q} --meta {input.meta:q}"
            " --out {output.metrics:q} --params {params.probe:q} --seed {params.seed}"
            " --bootstrap {params.bootstrap} --backbone {wildcards.backbone:q}"
            " --dataset {wildcards.dataset:q} --verified {input.ok:q} --device {params.device:q}"
            " --threads {threads} > {log:q} 2>&1"
