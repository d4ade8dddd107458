# One rule per probe family (probe_knn, probe_linear, ...), all running `mimprobe probe <family>`.
for family in PROBES:

    rule:
        name:
            f"probe_{family}"
        input:
            ok="results/embeddings/{backbone}/{dataset}.ok.json",
            meta="results/shards/{dataset}/meta.json",
        output:
            metrics=f"results/probes/{{backbone}}/{{dataset}}/{family}.json",
            predictions=f"results/probes/{{backbone}}/{{dataset}}/{family}.predictions.npz",
            heads=f"results/probes/{{backbone}}/{{dataset}}/{family}.heads.pt",
        params:
            family=family,
            store="results/embeddings/{backbone}/{dataset}.zarr",
            probe=as_json(probe_settings(family)),
            seed=config["seed"],
            bootstrap=config["report"]["bootstrap"],
        conda:
            "../../envs/mimprobe.yaml"
        log:
            f"logs/probe_{family}/{{backbone}}/{{dataset}}.log",
        benchmark:
            f"benchmarks/probe_{family}/{{backbone}}/{{dataset}}.tsv"
        shell:
            "mimprobe probe {params.family} --store {params.store} --meta {input.meta}"
            " --out {output.metrics} --params {params.probe:q} --seed {params.seed}"
            " --bootstrap {params.bootstrap} --backbone {wildcards.backbone}"
            " --dataset {wildcards.dataset} --verified {input.ok} > {log} 2>&1"
