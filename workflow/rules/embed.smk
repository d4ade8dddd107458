rule init_store:
    input:
        meta="results/shards/{dataset}/meta.json",
    output:
        store="results/embeddings/{backbone}/{dataset}.zarr/zarr.json",
    params:
        store=lambda wildcards, output: os.path.dirname(output.store),
        backbone=backbone_config,
        features=features_config,
        seed=config["seed"],
    conda:
        "../../envs/mimprobe.yaml"
    log:
        "logs/init_store/{backbone}/{dataset}.log",
    shell:
        "mimprobe init-store --store {params.store} --meta {input.meta} --backbone {params.backbone:q}"
        " --features {params.features:q} --seed {params.seed} > {log} 2>&1"


rule embed_chunk:
    input:
        store="results/embeddings/{backbone}/{dataset}.zarr/zarr.json",
        meta="results/shards/{dataset}/meta.json",
    output:
        flag="results/embeddings/{backbone}/{dataset}.chunks/{shard}.json",
    params:
        store=lambda wildcards, input: os.path.dirname(input.store),
        shard="results/shards/{dataset}/{shard}.npz",
        backbone=backbone_config,
        features=features_config,
        seed=config["seed"],
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/mimprobe.yaml"
    log:
        "logs/embed_chunk/{backbone}/{dataset}/{shard}.log",
    benchmark:
        "benchmarks/embed_chunk/{backbone}/{dataset}/{shard}.tsv"
    shell:
        "mimprobe embed-chunk --store {params.store} --meta {input.meta} --shard {params.shard}"
        " --flag {output.flag} --backbone {params.backbone:q} --features {params.features:q}"
        " --seed {params.seed} --threads {threads} > {log} 2>&1"


rule check_store:
    input:
        flags=chunk_flags,
    output:
        ok="results/embeddings/{backbone}/{dataset}.ok.json",
    params:
        store="results/embeddings/{backbone}/{dataset}.zarr",
    conda:
        "../../envs/mimprobe.yaml"
    log:
        "logs/check_store/{backbone}/{dataset}.log",
    shell:
        "mimprobe check-store --store {params.store} --out {output.ok} {input.flags} > {log} 2>&1"
