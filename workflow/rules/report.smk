rule report:
    input:
        probe_outputs(),
    output:
        table="results/report/metrics.csv",
        summary="results/report/metrics.md",
        plot="results/report/plots/accuracy_per_block.png",
    log:
        "logs/report/report.log",
    shell:
        "mimprobe report --out-dir results/report {input} > {log} 2>&1"
