rule prepare_shards:
    output:
        meta="results/shards/{dataset}/meta.json",
    params:
        dataset=dataset_config,
        resources_dir=config["resources_dir"],
        seed=config["seed"],
    conda:
        "../../envs/mimprobe.yaml"
    log:
        "logs/prepare_shards/{dataset}.log",
    shell:
        "mimprobe prepare-shards --dataset {params.dataset:q} --out-dir results/shards/{wildcards.dataset}"
        " --resources {params.resources_dir:q} --seed {params.seed} > {log} 2>&1"
