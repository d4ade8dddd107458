# One rule per probe family (probe_knn, probe_linear, ...), all running `mimprobe probe <family>`.
# A GPU is asked for only where probes.device names one (auto computes on a GPU only if the job has one).
PROBE_RESOURCES = {"gpu": 1} if config["probes"]["device"].startswith("cuda") else {}

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
            device=config["probes"]["device"],
        threads: 8
        resources:
            **PROBE_RESOURCES,
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
            " --dataset {wildcards.dataset} --verified {input.ok} --device {params.device}"
            " --threads {threads} > {log} 2>&1"
