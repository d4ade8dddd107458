"""Bootstrap speed benchmark (not a test). Writes results/bench/bootstrap_speed.json, prints a table.

One CIFAR-100-sized test record: 10,000 images x 100 classes (Dirichlet probabilities, the true
class boosted on half the images, 20 superclasses), `--resamples` 1,000, seed 0, for
metrics_with_ci, metrics_over_draws (3 draws) and cluster_metrics_with_ci (a clustering that puts
half the images in their class's cluster). Ours is the median of `--repeats` runs. Beside each, the
per-resample loop it replaces (a stable argsort of every resampled probability matrix; sklearn's
NMI/AMI/ARI on every resample), timed on `--loop-resamples` resamples and scaled to `--resamples`.
Ours is also run with `--loop-resamples` resamples and compared with the loop: `max_abs_difference`
over every value and interval bound. Seconds are wall time; `*_cpu_s` the process's CPU time, the
steadier figure on a machine shared with other jobs.

Usage: python workflow/bench/bootstrap_speed.py [--resamples 1000] [--loop-resamples 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimprobe import metrics

OUT = Path("results/bench")
N, CLASSES, DRAWS = 10_000, 100, 3


def record(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    draws = []
    for _ in range(DRAWS):
        probs = rng.dirichlet(np.full(CLASSES, 0.3), N)
        probs[np.arange(N // 2), labels[: N // 2]] += 1.0
        draws.append((probs / probs.sum(1, keepdims=True)).astype(np.float32))
    clusters = np.where(rng.random(N) < 0.5, labels, rng.integers(0, CLASSES, N))
    return labels, draws, np.arange(CLASSES) // 5, clusters


def sorted_scores(labels, probs, coarse) -> dict:
    """The per-resample scoring the loop does: a full stable sort, then the confusion matrix."""
    ranked = np.argsort(-probs, axis=1, kind="stable")
    predicted = ranked[:, 0]
    confusion = metrics.confusion_matrix(labels, predicted, probs.shape[1])
    out = {"top1": float((predicted == labels).mean()),
           "top5": float((ranked[:, :5] == labels[:, None]).any(axis=1).mean())}
    out |= {k: float(v) for k, v in metrics._precision_recall_f1(np.diag(confusion), confusion.sum(1),
                                                                  confusion.sum(0)).items()}
    return out | {"superclass_top1": float((coarse[predicted] == coarse[labels]).mean())}


def cluster_scores(labels, clusters, correct) -> dict:
    return {"acc": float(correct.mean()), "nmi": normalized_mutual_info_score(labels, clusters),
            "ami": adjusted_mutual_info_score(labels, clusters), "ari": adjusted_rand_score(labels, clusters)}


def loop(score, resamples: int, seed: int = 0) -> tuple[tuple[float, float], dict, dict]:
    """((wall s, CPU s), value on all images, {metric: [value per resample]}) of the per-resample loop."""
    rng = np.random.default_rng(seed)
    began, began_cpu = time.perf_counter(), time.process_time()
    draws = [score(rng.integers(0, N, N)) for _ in range(resamples)]
    seconds = time.perf_counter() - began, time.process_time() - began_cpu
    return seconds, score(np.arange(N)), {name: [d[name] for d in draws] for name in draws[0]}


def max_difference(ours: dict, value: dict, draws: dict, bias_corrected=()) -> float:
    worst = 0.0
    for name, v in value.items():
        bias = float(np.mean(draws[name])) - v if name in bias_corrected else 0.0
        expected = (v, float(np.percentile(draws[name], 2.5)) - bias, float(np.percentile(draws[name], 97.5)) - bias)
        got = (ours[name]["value"], ours[name]["ci_low"], ours[name]["ci_high"])
        worst = max(worst, *(abs(a - b) for a, b in zip(got, expected)))
    return worst


def median_seconds(run, repeats: int) -> tuple[float, float]:
    """(wall s, CPU s), each the median over the repeats."""
    times = []
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - began, time.process_time() - began_cpu))
    return tuple(float(t) for t in np.median(times, axis=0))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--loop-resamples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    labels, draws, coarse, clusters = record()
    mapping = metrics.cluster_accuracy_mapping(labels, clusters, CLASSES)
    correct = mapping[clusters] == labels

    def mean_over(probs_list):
        def score(rows):
            each = [sorted_scores(labels[rows], p[rows], coarse) for p in probs_list]
            return {name: float(np.mean([d[name] for d in each])) for name in each[0]}
        return score

    cases = [
        ("metrics_with_ci", lambda r: metrics.metrics_with_ci(labels, draws[0], coarse, r, 0),
         mean_over(draws[:1]), ()),
        (f"metrics_over_draws ({DRAWS} draws)", lambda r: metrics.metrics_over_draws(labels, draws, coarse, r, 0),
         mean_over(draws), ()),
        ("cluster_metrics_with_ci", lambda r: metrics.cluster_metrics_with_ci(labels, clusters, r, 0, CLASSES)[0],
         lambda rows: cluster_scores(labels[rows], clusters[rows], correct[rows]), ("nmi", "ami", "ari")),
    ]
    rows = []
    for name, ours, score, bias_corrected in cases:
        (ours_s, ours_cpu_s) = median_seconds(lambda ours=ours: ours(args.resamples), args.repeats)
        (loop_s, loop_cpu_s), value, loop_draws = loop(score, args.loop_resamples)
        scale = args.resamples / args.loop_resamples
        same = ours(args.loop_resamples)
        same.pop("top1_std", None)
        rows.append({"function": name, "ours_s": round(ours_s, 3), "ours_cpu_s": round(ours_cpu_s, 3),
                     "loop_s_scaled": round(loop_s * scale, 2), "loop_cpu_s_scaled": round(loop_cpu_s * scale, 2),
                     "speedup": round(loop_s * scale / ours_s, 1),
                     "speedup_cpu": round(loop_cpu_s * scale / ours_cpu_s, 1),
                     "max_abs_difference": max_difference(same, value, loop_draws, bias_corrected)})
    ami_s = median_seconds(lambda: adjusted_mutual_info_score(labels, clusters), args.repeats)[0]
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "record": f"{N:,} images x {CLASSES} classes, seed 0", "resamples": args.resamples,
              "loop_resamples": args.loop_resamples, "repeats": args.repeats, "rows": rows,
              "sklearn_ami_one_resample_s": round(ami_s, 4)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bootstrap_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{N:,} x {CLASSES} record, {args.resamples:,} resamples; loop timed on {args.loop_resamples} "
          f"resamples and scaled; ours: median of {args.repeats}")
    print(f"{'function':30s} {'ours s':>7s} {'(CPU)':>7s} {'loop s':>8s} {'(CPU)':>8s} {'speed-up':>9s} "
          f"{'(CPU)':>7s} {'max |ours - loop|':>18s}")
    for row in rows:
        print(f"{row['function']:30s} {row['ours_s']:7.3f} {row['ours_cpu_s']:7.3f} {row['loop_s_scaled']:8.1f} "
              f"{row['loop_cpu_s_scaled']:8.1f} {row['speedup']:8.0f}x {row['speedup_cpu']:6.0f}x "
              f"{row['max_abs_difference']:18.1e}")
    print(f"sklearn adjusted_mutual_info_score on one 10,000-image resample: {ami_s:.3f} s")
    return result


if __name__ == "__main__":
    main()
