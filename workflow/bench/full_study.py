"""The full study, rehearsed at full size on any machine (`make rehearsal`; a benchmark, not a test).

    python workflow/bench/full_study.py                       # CPU: synthetic ViT-L, all of CIFAR-100
    python workflow/bench/full_study.py --device cuda --model random:vit_large_patch16_224   # one H200: < 8 min
    python workflow/bench/full_study.py --train 2000 --test 500 --out results/bench/small.json

It writes a CIFAR-100-format archive (50,000 / 10,000 class-structured images, Python 2 pickles),
then runs the real `snakemake` on `config/config.yaml` with that archive as the dataset and one
backbone (default `synthetic:vit_large_patch16_224`: ViT-L/16's 24 blocks of 1,024-d features at
almost no cost, so embedding measures start-up). Probes, features and bootstrap come from the full
study's config unchanged. It reports, in a table and in results/bench/full_study.json:
- wall time per stage (shards, embedding = first embedding job's start to check_store's end,
  probes, report) and end to end; jobs per stage;
- per_job_startup_s: an embedding job's wall time minus its in-loop time (forward and store writes);
- probe_family_s: the summed job wall time of each probe family, and the bootstrap's share of it;
- bootstrap_record_s: one CIFAR-100-sized record (10,000 x 100 probabilities, 1,000 resamples),
  beside the per-resample loop (`point_metrics` on each resample) timed on 50 resamples and scaled;
- peak_rss_mb: the largest resident set of any job;
- with `--device cuda` and a real architecture: workflow_embed_img_s (images / embedding stage), and in
  the same run our in-process extraction, timm's plain bf16 forward and the matmul ceiling
  (extract_throughput.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))

EMBED_RULES = ("init_store", "embed_chunk", "embed_shards", "check_store")
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
STARTED = re.compile(r"^(?:local)?(?:checkpoint|rule) (\S+):$")
FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\S+)\)")


def synthetic_archive(folder: Path, train: int, test: int, seed: int) -> Path:
    from mimprobe.synthetic import synthetic_cifar100, write_cifar100_archive

    path = folder / f"cifar-100-synthetic-{train}-{test}-{seed}.tar.gz"
    if not path.is_file():
        began = time.perf_counter()
        write_cifar100_archive(path, synthetic_cifar100(train, test, seed))
        print(f"wrote {path} in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return path


def study_config(archive: Path, args) -> dict:
    """config/config.yaml with the synthetic archive as its dataset and one rehearsal backbone."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    dataset = next(iter(config["datasets"].values()))
    config["datasets"] = {"cifar100": dataset | {"archive": str(archive), "verify_md5": False}}
    config["backbones"] = {"rehearsal": {"model": args.model}}
    config["features"]["device"] = args.device
    config["probes"]["device"] = args.device
    if args.bootstrap is not None:
        config["report"]["bootstrap"] = args.bootstrap
    return config


def job_spans(log_text: str) -> list[dict]:
    """[{rule, start, end}] from Snakemake's own log (timestamps to the second)."""
    jobs, open_jobs, stamp, lines = [], {}, None, log_text.splitlines()
    for line in lines:
        found = STAMP.match(line.strip())
        if found:
            stamp = datetime.strptime(found.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        started, finished = STARTED.match(line.strip()), FINISHED.match(line.strip())
        if started and stamp is not None and started.group(1) != "all":
            open_jobs.setdefault(started.group(1), []).append(stamp)
        elif finished and open_jobs.get(finished.group(1)):
            jobs.append({"rule": finished.group(1), "start": open_jobs[finished.group(1)].pop(0), "end": stamp})
    return jobs


def stage(jobs: list[dict], rules) -> dict:
    chosen = [j for j in jobs if rules(j["rule"])]
    if not chosen:
        return {"wall_s": 0.0, "jobs": 0}
    return {"wall_s": max(j["end"] for j in chosen) - min(j["start"] for j in chosen), "jobs": len(chosen)}


def benchmark_rows(workdir: Path) -> list[dict]:
    """Snakemake's per-job benchmark files: rule, wall seconds, max RSS (MB)."""
    rows = []
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        rule = path.relative_to(workdir / "benchmarks").parts[0]
        with open(path) as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rss = row.get("max_rss", "NA")
                rows.append({"rule": rule, "s": float(row["s"]), "max_rss": float(rss) if rss != "NA" else 0.0,
                             "path": path})
    return rows


def embed_loop_seconds(workdir: Path) -> dict[str, float]:
    """{benchmark file stem: seconds in the forward/write loop} from the embedding flags."""
    loops = {}
    for flag in (workdir / "results" / "embeddings").rglob("*.chunks/*.json"):
        record = json.loads(flag.read_text())
        shards = record.get("shards", [record])
        loops[flag.stem] = sum(s["seconds"] for s in shards)
    return loops


def probe_timings(workdir: Path) -> dict[str, dict]:
    """{family: {fit_s, bootstrap_s, records}} from the probe JSONs (timing keys where recorded)."""
    out = {}
    for path in (workdir / "results" / "probes").rglob("*.json"):
        payload = json.loads(path.read_text())
        entry = out.setdefault(payload["probe"], {"fit_s": 0.0, "bootstrap_s": 0.0, "records": 0})
        timing = payload.get("timing", {})
        entry["fit_s"] += timing.get("fit_s", float("nan"))
        entry["bootstrap_s"] += timing.get("bootstrap_s", float("nan"))
        entry["records"] += len(payload["results"])
    return out


def bootstrap_seconds(resamples: int = 1000, reference_resamples: int = 50) -> dict:
    """One CIFAR-100-sized test record: ours, and the per-resample loop it replaces (a stable sort of
    every resampled probability matrix, as bootstrap_speed.py times it) on a few resamples, scaled."""
    from bootstrap_speed import record, sorted_scores  # the same folder: the loop's reference scoring

    from mimprobe.metrics import metrics_with_ci

    labels, draws, coarse, _ = record()
    began = time.perf_counter()
    metrics_with_ci(labels, draws[0], coarse, resamples, 0)
    ours = time.perf_counter() - began
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    for _ in range(reference_resamples):
        rows = rng.integers(0, len(labels), len(labels))
        sorted_scores(labels[rows], draws[0][rows], coarse)
    loop = (time.perf_counter() - began) * resamples / reference_resamples
    return {"bootstrap_record_s": round(ours, 3), "bootstrap_loop_record_s": round(loop, 2)}


def run_snakemake(workdir: Path, config_path: Path, cores: int, timeout: float | None) -> tuple[int, float]:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_path), "--cores", str(cores), "--show-failed-logs"]
    began = time.perf_counter()
    with open(workdir / "snakemake.out", "w") as log:
        try:
            rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    return rc, time.perf_counter() - began


def summarise(workdir: Path, args, rc: int, total: float) -> dict:
    log = (workdir / "snakemake.out").read_text()
    jobs = job_spans(log)
    rows = benchmark_rows(workdir)
    loops = embed_loop_seconds(workdir)
    startups = [r["s"] - loops[r["path"].stem] for r in rows
                if r["rule"] in EMBED_RULES[1:3] and r["path"].stem in loops]
    families = {}
    for row in rows:
        if row["rule"].startswith("probe_"):
            family = row["rule"].removeprefix("probe_")
            families[family] = families.get(family, 0) + row["s"]
    timings = probe_timings(workdir)
    measured = [t["bootstrap_s"] for t in timings.values() if not np.isnan(t["bootstrap_s"])]
    result = {
        "label": args.label, "finished": rc == 0, "snakemake_exit": rc, "model": args.model,
        "images": args.train + args.test, "cores": args.cores,
        "device": args.device if args.device != "auto" else "auto",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "rehearsal_total_s": round(total, 1),
        "shards_stage_s": stage(jobs, lambda r: r.startswith("prepare_shards") or r.startswith("download_"))["wall_s"],
        "embed_stage_s": stage(jobs, lambda r: r in EMBED_RULES)["wall_s"],
        "embed_jobs": stage(jobs, lambda r: r in EMBED_RULES)["jobs"],
        "per_job_startup_s": round(float(np.mean(startups)), 2) if startups else None,
        "probe_stage_s": stage(jobs, lambda r: r.startswith("probe_"))["wall_s"],
        "probe_jobs": stage(jobs, lambda r: r.startswith("probe_"))["jobs"],
        "probe_family_s": {f: round(s, 1) for f, s in sorted(families.items())},
        "report_stage_s": stage(jobs, lambda r: r == "report")["wall_s"],
        "peak_rss_mb": round(max((r["max_rss"] for r in rows), default=0.0), 1),
        "test_records": {f: t["records"] for f, t in sorted(timings.items())},
    }
    if result["embed_stage_s"]:
        result["workflow_embed_img_s"] = round(result["images"] / result["embed_stage_s"], 1)
    result |= bootstrap_seconds()
    probe_job_seconds = sum(families.values())
    if measured and len(measured) == len(timings):
        share = sum(measured) / max(probe_job_seconds, 1e-9)
        result["bootstrap_share_of_probes"] = round(share, 3)
    elif probe_job_seconds:  # no timing recorded: every record bootstrapped with the loop
        records = sum(t["records"] for t in timings.values())
        estimate = records * result["bootstrap_loop_record_s"]
        result["bootstrap_share_of_probes"] = round(min(1.0, estimate / probe_job_seconds), 3)
        result["bootstrap_share_estimated"] = True
    return result


def in_process_throughput(args) -> dict:
    """On a GPU: our in-process extraction beside timm's plain forward and the matmul ceiling, in this run."""
    import extract_throughput  # the same folder

    out = Path(args.out).with_name("extract_throughput_" + Path(args.out).name)
    measured = extract_throughput.main(["--model", args.model, "--images", str(args.throughput_images),
                                        "--batch-size", "256", "--device", args.device, "--out", str(out)])
    return {"in_process_img_s": measured["ours_img_s"], "timm_forward_img_s": measured["timm_forward_img_s"],
            "in_process_vs_timm": measured["ours_vs_timm_forward"], "matmul_tflop_s": measured["matmul_tflop_s"],
            "ceiling_img_s": measured["ceiling_img_s"]}


def print_table(result: dict) -> None:
    rows = [("end to end", result["rehearsal_total_s"], ""),
            ("shards", result["shards_stage_s"], ""),
            ("embedding (first job start to check_store end)", result["embed_stage_s"],
             f"{result['embed_jobs']} jobs, {result['per_job_startup_s']} s fixed cost per embedding job"),
            ("probes", result["probe_stage_s"], f"{result['probe_jobs']} jobs")]
    rows += [(f"  probe_{family} (job seconds)", seconds, f"{result['test_records'].get(family, 0)} records")
             for family, seconds in result["probe_family_s"].items()]
    for key in ("workflow_embed_img_s", "in_process_img_s", "timm_forward_img_s", "ceiling_img_s"):
        if key in result:
            rows.append((key.replace("_", " "), result[key], ""))
    rows += [("report", result["report_stage_s"], ""),
             ("bootstrap, one 10,000 x 100 record x 1,000", result["bootstrap_record_s"],
              f"per-resample loop: {result['bootstrap_loop_record_s']} s; share of probe time "
              f"{result.get('bootstrap_share_of_probes')}"
              f"{' (estimated)' if result.get('bootstrap_share_estimated') else ''}"),
             ("peak RSS of a job (MB)", result["peak_rss_mb"], "")]
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'seconds':>8}  notes")
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds:>8}  {note}")
    if not result["finished"]:
        print(f"snakemake did not finish (exit {result['snakemake_exit']}): stages above are what had run")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--model", default="synthetic:vit_large_patch16_224")
    parser.add_argument("--device", default="auto", help="features.device for the run: auto, cpu, cuda")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--bootstrap", type=int, default=None, help="override report.bootstrap (default: the study's)")
    parser.add_argument("--workdir", default="results/bench/full_study_run", help="emptied first; kept afterwards")
    parser.add_argument("--cache", default="results/bench", help="where the synthetic archive is kept")
    parser.add_argument("--timeout", type=float, default=None, help="stop snakemake after this many seconds")
    parser.add_argument("--label", default="")
    parser.add_argument("--throughput-images", type=int, default=8192,
                        help="with --device cuda: images for the in-process and timm forward measurements")
    parser.add_argument("--out", default="results/bench/full_study.json")
    args = parser.parse_args(argv)

    import shutil

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    archive = synthetic_archive(cache, args.train, args.test, 0).resolve()
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(study_config(archive, args)))
    rc, total = run_snakemake(workdir, config_path, args.cores, args.timeout)
    result = summarise(workdir, args, rc, total)
    if args.device.startswith("cuda") and not args.model.startswith("synthetic:"):
        result |= in_process_throughput(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
