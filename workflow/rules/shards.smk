# Downloads run where Snakemake runs (the login node on a cluster): compute nodes need no internet.
for _kind, _archive in sorted(downloads().items()):

    rule:
        name:
            f"download_{_kind}"
        output:
            archive=f"{config['resources_dir']}/{_archive['filename']}",
        log:
            f"logs/download/{_kind}.log",
        localrule: True
        conda:
            "../../envs/mimprobe.yaml"
        params:
            kind=_kind,
        shell:
            "mimprobe download --kind {params.kind} --out {output.archive:q} > {log:q} 2>&1"


# One rule per dataset: its outputs, every shard, are known before any job runs.
for _name, _entry in config["datasets"].items():

    rule:
        name:
            f"prepare_shards_{_name}"
        input:
            archive=archive_path(_entry),
        output:
            meta=layout.meta_path(_name),
            shards=[layout.shard_path(_name, shard) for shard in SHARDS[_name]],
        log:
            f"logs/prepare_shards/{_name}.log",
        benchmark:
            f"benchmarks/prepare_shards/{_name}.tsv"
        conda:
            "../../envs/mimprobe.yaml"
        resources:
            mem_mb=sharding_memory_mb(_name),
        params:
            dataset=as_json(_entry),
            sizes=as_json(SIZES[_name]),
            sources=as_json(SOURCES[_name]),
            out_dir=lambda wildcards, output: os.path.dirname(output.meta),
            seed=config["seed"],
            code=CODE["prepare_shards"],
        shell:
            "mimprobe prepare-shards --dataset {params.dataset:q} --expect {params.sizes:q}"
            " --out-dir {params.out_dir:q} --archive {input.archive:q} --seed {params.seed}"
            " > {log:q} 2>&1"
