# init_store reads no file: everything the store depends on is in its params (store_identity).
rule init_store:
    output:
        store=layout.store_root_file("{backbone}", "{dataset}"),
    log:
        "logs/init_store/{backbone}/{dataset}.log",
    conda:
        "../../envs/mimprobe.yaml"
    params:
        store=lambda wildcards: layout.store_path(wildcards.backbone, wildcards.dataset),
        layout=store_layout,
        backbone=backbone_config,
        features=features_config,
        identity=store_identity,
        seed=config["seed"],
    shell:
        "mimprobe init-store --store {params.store:q} --layout {params.layout:q} --backbone {params.backbone:q}"
        " --features {params.features:q} --seed {params.seed} > {log:q} 2>&1"


# One job embeds a lane of shards: start-up (imports, CUDA, weights) is paid once per lane, and each
# shard still gets its own region. Shards are `ancient`: rebuilt shards (one was deleted) rerun only
# the lanes that missed a file; any change to what the shards hold recreates the store (init_store).
rule embed_shards:
    input:
        store=layout.store_root_file("{backbone}", "{dataset}"),
        shards=ancient(lane_shard_files),
    output:
        flag=layout.flag_path("{backbone}", "{dataset}", "{lane}"),
    log:
        "logs/embed_shards/{backbone}/{dataset}/{lane}.log",
    benchmark:
        "benchmarks/embed_shards/{backbone}/{dataset}/{lane}.tsv"
    conda:
        "../../envs/mimprobe.yaml"
    threads: 1
    resources:
        gpu=embed_gpus,
    params:
        store=lambda wildcards: layout.store_path(wildcards.backbone, wildcards.dataset),
        backbone=backbone_config,
        features=features_config,
        lane=lane_sources,
        seed=config["seed"],
        code=CODE["embed"],
    shell:
        "mimprobe embed-shards --store {params.store:q} --flag {output.flag:q}"
        " --backbone {params.backbone:q} --features {params.features:q} --seed {params.seed}"
        " --threads {threads} {input.shards:q} > {log:q} 2>&1"


rule check_store:
    input:
        flags=lane_flags,
    output:
        ok=layout.checked_path("{backbone}", "{dataset}"),
    log:
        "logs/check_store/{backbone}/{dataset}.log",
    conda:
        "../../envs/mimprobe.yaml"
    params:
        store=lambda wildcards: layout.store_path(wildcards.backbone, wildcards.dataset),
        code=CODE["check_store"],
    shell:
        "mimprobe check-store --store {params.store:q} --out {output.ok:q} {input.flags:q} > {log:q} 2>&1"
