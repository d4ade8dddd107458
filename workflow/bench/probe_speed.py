"""Probe speed and agreement benchmark (not a test). Writes results/bench/probe_speed.json, prints a table.

(a) 50,000 x 1,024 class-structured synthetic features (4 blocks x {cls, mean} x 256 dims, so the
    last-4-blocks CLS concatenation is 1,024 wide), 100 classes, 5,000 of train held out for
    validation, 10,000 test: the linear grid (13 rates x {1, 4 blocks} x {cls, cls+mean} = 52 heads)
    plus kNN for every k (validation pass + test pass) on the 1,024-wide features.
(b) our logreg solver with the family's defaults (full-batch L-BFGS in torch) vs sklearn
    LogisticRegression(lbfgs) with its defaults (max_iter=100), same standardised features, same C;
    test top-1 of both and the objective both minimise, evaluated in float64 at each solution.
    Each solver first fits 1,000 rows untimed (one-time imports and initialisation).
(c) CIFAR-10 subset (5,000 train + 2,000 test real images) through EfficientNet-Lite0 (pre_logits,
    224 px; features cached in results/bench/): our logreg, linear and kNN beside sklearn's.

(store) With --store/--meta: every family of a study config (default config/config.yaml, schema
    defaults filled in) on a real feature store, each through `mimprobe probe` in its own process,
    on --device, for each of --threads; --blocks keeps only those stored blocks (a symlinked view of
    the store). With --baseline PATH (another checkout's `workflow/` folder) the same runs with that
    code come first, in the same session, and the table gives both and the speed-up. Bootstrap off
    unless --bootstrap. Writes results/bench/probe_speed_store.json.

Usage: python workflow/bench/probe_speed.py [cifar10-jpeg-subset.npz] [--parts abc] [--threads 2]
       python workflow/bench/probe_speed.py --store S.zarr --meta meta.json [--device cuda]
           [--threads 1 2] [--blocks 23] [--families knn linear] [--baseline ../main/workflow]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimprobe.probes import knn, linear
from mimprobe.probes.common import Split, Splits
from mimprobe.probes.lbfgs import fit_l2_linear, top1

OUT = Path("results/bench")
LINEAR = {"epochs": 10, "batch_size": 1024, "per_block": False}  # lrs are per 256 images, scaled


def synthetic(n_train=50_000, n_test=10_000, classes=100, dim=256, blocks=4, scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    y, y_test = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    val = np.zeros(n_train, bool)
    val[rng.choice(n_train, n_train // 10, replace=False)] = True
    arrays = {}
    for b in range(blocks):
        for p in ("cls", "mean"):
            centres = rng.normal(size=(classes, dim)).astype(np.float32) * scale * (1 + b / 3)
            x = (centres[y] + rng.normal(size=(n_train, dim)).astype(np.float32)).astype(np.float16)
            xt = (centres[y_test] + rng.normal(size=(n_test, dim)).astype(np.float32)).astype(np.float16)
            arrays[(b, p)] = Splits(Split(x[~val], y[~val]), Split(x[val], y[val]), Split(xt, y_test),
                                    Split(x, y), classes)
    return arrays


def concat(arrays, keys) -> Splits:
    first = arrays[keys[0]]
    join = lambda name: np.concatenate([getattr(arrays[k], name).x for k in keys], 1).astype(np.float32)  # noqa: E731
    return Splits(*(Split(join(n), getattr(first, n).y) for n in ("train", "val", "test", "train_all")),
                  first.num_classes)


def run_knn(splits: Splits) -> tuple[int, float]:
    ks = [10, 20, 100, 200]
    val = knn.knn_probabilities(splits.train.x, splits.train.y, splits.val.x, ks, splits.num_classes)
    best = max(ks, key=lambda k: (val[k].argmax(1) == splits.val.y).mean())
    test = knn.knn_probabilities(splits.train_all.x, splits.train_all.y, splits.test.x, [best], splits.num_classes)
    return best, float((test[best].argmax(1) == splits.test.y).mean())


def part_a(arrays) -> dict:
    start = time.perf_counter()
    outcomes = linear.fit_store(lambda b, p: arrays[(b, p)], sorted(arrays), LINEAR, 0)
    grid_s = time.perf_counter() - start
    best = max(outcomes, key=lambda o: max(o.validation.values()))
    start = time.perf_counter()
    k, knn_acc = run_knn(concat(arrays, [(b, "cls") for b in range(4)]))
    knn_s = time.perf_counter() - start
    return {"heads": sum(len(o.validation) for o in outcomes), "linear_grid_seconds": round(grid_s, 1),
            "knn_seconds": round(knn_s, 1), "grid_and_knn_seconds": round(grid_s + knn_s, 1),
            "linear_best": f"{best.pooling} {best.setting}",
            "linear_test_top1": float((best.test_probs.argmax(1) == arrays[(0, 'cls')].test.y).mean()),
            "knn_k": k, "knn_test_top1": knn_acc,
            "linear_settings": LINEAR | {"precision": outcomes[0].extra["precision"]}}


def l2_logistic_objective(x, y, weight, bias, c: float) -> float:
    """The objective both solvers minimise, in float64: mean cross-entropy + ||W||² / (2 C N)."""
    logits = x.astype(np.float64) @ weight + bias
    logits -= logits.max(1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(1))
    return float((log_norm - logits[np.arange(len(y)), y]).mean() + (weight ** 2).sum() / (2 * c * len(y)))


def logreg_pair(splits: Splits, c: float, max_iter: int = 100) -> dict:
    from sklearn.linear_model import LogisticRegression

    from mimprobe.config import probe_params

    mean, std = splits.train_all.x.mean(0), splits.train_all.x.std(0) + 1e-6
    x, x_test = (splits.train_all.x - mean) / std, (splits.test.x - mean) / std
    y = splits.train_all.y
    solver = {k: probe_params("logreg", {})[k] for k in ("max_iter", "tol", "precision", "polish_iter")}
    # one small fit each first, untimed: one-time imports and initialisation, for both alike
    fit_l2_linear(torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000]).long(), splits.num_classes, c, **solver)
    LogisticRegression(C=c, max_iter=5).fit(x[:1000], y[:1000])
    start = time.perf_counter()
    ours = fit_l2_linear(torch.from_numpy(x), torch.from_numpy(y).long(), splits.num_classes, c, **solver)
    ours_s = time.perf_counter() - start
    ours_acc = top1(torch.from_numpy(x_test), torch.from_numpy(splits.test.y).long(), ours)
    start = time.perf_counter()
    reference = LogisticRegression(C=c, max_iter=max_iter).fit(x, y)
    sk_s = time.perf_counter() - start
    sk_acc = float(reference.score(x_test, splits.test.y))
    ours_objective = l2_logistic_objective(x, y, ours[0].double().numpy(), ours[1].double().numpy(), c)
    sk_objective = l2_logistic_objective(x, y, reference.coef_.T, reference.intercept_, c)
    return {"C": c, "sklearn_max_iter": max_iter, "sklearn_iterations": int(reference.n_iter_[0]), "ours": solver,
            "logreg_seconds": round(ours_s, 2), "sklearn_seconds": round(sk_s, 2),
            "logreg_speedup_vs_sklearn": round(sk_s / ours_s, 1), "logreg_test_top1": ours_acc,
            "sklearn_test_top1": sk_acc, "logreg_acc_minus_sklearn": round(ours_acc - sk_acc, 4),
            "logreg_objective": round(ours_objective, 5), "sklearn_objective": round(sk_objective, 5)}


def cifar_features(npz: Path) -> dict:
    cache = OUT / "cifar10_effnet_lite0.npz"
    if cache.exists():
        return dict(np.load(cache))
    from mimprobe.backbones import create_backbone

    data = np.load(npz)
    backbone = create_backbone("effnet_lite0")
    block = len(backbone.block_names) - 1  # pre_logits
    out = {"y_train": data["y_train"], "y_test": data["y_test"]}
    for split in ("train", "test"):
        images, feats = data[f"x_{split}"], []
        with torch.inference_mode():
            for start in range(0, len(images), 64):
                batch = backbone.preprocess(torch.from_numpy(images[start:start + 64]))
                feats.append(backbone.forward_blocks(batch, [block], ["mean"])[(block, "mean")].float().numpy())
        out[f"x_{split}"] = np.concatenate(feats)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def part_c(npz: Path) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    f = cifar_features(npz)
    rng = np.random.default_rng(0)
    val = np.zeros(len(f["y_train"]), bool)
    val[rng.choice(len(val), len(val) // 10, replace=False)] = True
    x, y = f["x_train"].astype(np.float32), f["y_train"]
    splits = Splits(Split(x[~val], y[~val]), Split(x[val], y[val]), Split(f["x_test"].astype(np.float32), f["y_test"]),
                    Split(x, y), 10)
    from mimprobe.probes import logreg

    ours_logreg = logreg.fit(splits, {}, 0)
    c = ours_logreg.chosen["C"]
    pair = logreg_pair(splits, c, max_iter=1000)
    lin = linear.fit(splits, {}, 0)
    k, knn_acc = run_knn(splits)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sk_knn = KNeighborsClassifier(k, metric="cosine", weights="distance").fit(unit(x), y)
    acc = lambda p: float((p.argmax(1) == splits.test.y).mean())  # noqa: E731
    return {"features": f"effnet_lite0 pre_logits {x.shape[1]}-d", "logreg_C_chosen_on_val": c,
            "logreg_test_top1": acc(ours_logreg.test_probs),
            "sklearn_logreg_test_top1_same_C": pair["sklearn_test_top1"],
            "linear_test_top1": acc(lin.test_probs), "linear_setting": lin.setting,
            "knn_k": k, "knn_test_top1": knn_acc,
            "sklearn_knn_test_top1": float(sk_knn.score(unit(splits.test.x), splits.test.y))}


def store_view(store: Path, blocks: list[int], folder: Path) -> Path:
    """A store holding only `blocks`: the root metadata rewritten, every array a symlink."""
    view = folder / store.name
    root = json.loads((store / "zarr.json").read_text())
    attrs = root["attributes"]
    keep = [i for i, b in enumerate(attrs["blocks"]) if b in blocks]
    attrs["blocks"] = [attrs["blocks"][i] for i in keep]
    attrs["block_names"] = [attrs["block_names"][i] for i in keep]
    attrs["arrays"] = {name: shape for name, shape in attrs["arrays"].items() if int(name.split("/b")[1]) in blocks}
    view.mkdir(parents=True)
    (view / "zarr.json").write_text(json.dumps(root))
    for split in (d for d in store.iterdir() if d.is_dir()):
        (view / split.name).mkdir()
        shutil.copy(split / "zarr.json", view / split.name / "zarr.json")
        for member in (m for m in split.iterdir() if m.is_dir()):
            if member.name not in attrs["poolings"]:  # labels
                (view / split.name / member.name).symlink_to(member.resolve())
                continue
            (view / split.name / member.name).mkdir()
            shutil.copy(member / "zarr.json", view / split.name / member.name / "zarr.json")
            for block in attrs["blocks"]:
                (view / split.name / member.name / f"b{block:03d}").symlink_to((member / f"b{block:03d}").resolve())
    return view


def best_test(payload: dict) -> tuple[str, float]:
    """(setting, test value) of the record best on validation (k-means: the only one, acc)."""
    best = max(payload["results"], key=lambda r: max(r["validation"].values(), default=0.0))
    metric, stat = next(iter(best["test"].items()))
    return f"b{best['block']} {best['pooling']} {best['setting']} {metric}", round(stat["value"], 4)


def run_probe(code: Path, family: str, params: dict, store: Path, meta: Path, out: Path, threads: int,
              device: str | None, bootstrap: int) -> dict:
    """`mimprobe probe` of the checkout at `code` in a fresh process; wall seconds and its JSON."""
    env = os.environ | {"PYTHONPATH": str(code)} | {v: str(threads) for v in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    command = [sys.executable, "-m", "mimprobe.cli", "probe", family, "--store", str(store), "--meta", str(meta),
               "--out", str(out), "--params", json.dumps(params), "--seed", "0", "--bootstrap", str(bootstrap),
               "--backbone", "bench", "--dataset", "bench"]
    if device is not None:  # a checkout without --device/--threads runs on the CPU with OMP_NUM_THREADS
        command += ["--device", device, "--threads", str(threads)]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{family} ({code}) failed:\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    payload = json.loads(out.read_text())
    setting, value = best_test(payload)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "core_min": round(cpu / 60, 2),
            "timing": payload.get("timing"), "best": setting, "test": value}


def part_store(args) -> dict:
    from mimprobe.config import load_config
    from mimprobe.probes import enabled_families

    config = load_config(args.config)
    families = args.families or enabled_families(config)
    code = {"ours": Path(__file__).resolve().parents[1]}
    if args.baseline:
        code = {"baseline": Path(args.baseline).resolve()} | code
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = store_view(Path(args.store), args.blocks, Path(tmp)) if args.blocks else Path(args.store)
        for family in families:
            params = {k: v for k, v in config["probes"][family].items() if k != "enabled"}
            for threads in args.threads:
                row = {"family": family, "threads": threads, "device": args.device}
                for name, path in code.items():
                    out = Path(tmp) / name / str(threads) / f"{family}.json"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    row[name] = run_probe(path, family, params, store, Path(args.meta), out, threads,
                                          args.device if name == "ours" else None, args.bootstrap)
                    print(f"  {family} {threads} thread(s) {name}: {row[name]}", flush=True)
                if "baseline" in row:
                    row["speedup"] = round(row["baseline"]["cpu_s"] / row["ours"]["cpu_s"], 2)
                rows.append(row)
    arrays = f"blocks {args.blocks}" if args.blocks else "every stored block"
    print(f"\nstore {args.store} ({arrays}), device {args.device}, bootstrap {args.bootstrap}")
    print("CPU seconds (user + system, all threads) measure the work whatever else runs on the machine;"
          " wall seconds do not.")
    print(f"{'family':9s} {'threads':>7s} {'base cpu s':>10s} {'ours cpu s':>10s} {'speed-up':>8s} {'base wall':>9s}"
          f" {'ours wall':>9s} {'fit s':>7s} {'load s':>7s}  best on validation -> test (baseline | ours)")
    for r in rows:
        base, ours = r.get("baseline", {}), r["ours"]
        print(f"{r['family']:9s} {r['threads']:7d} {base.get('cpu_s', '-'):>10} {ours['cpu_s']:10.1f}"
              f" {r.get('speedup', '-'):>8} {base.get('wall_s', '-'):>9} {ours['wall_s']:9.1f}"
              f" {ours['timing']['fit_s']:7.1f} {ours['timing']['load_s']:7.1f}"
              f"  {base.get('test', '-')} | {ours['best']} {ours['test']}")
    return {"store": str(args.store), "blocks": args.blocks or "all", "device": args.device,
            "bootstrap": args.bootstrap, "cpu_count": os.cpu_count(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifar", nargs="?", default="../shared/data/cifar10-jpeg-subset.npz")
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--store", help="a feature store (.zarr): time every family of --config on it")
    parser.add_argument("--meta", help="the store's dataset meta.json")
    parser.add_argument("--device", default="cpu", help="probes.device for the store runs (cpu, cuda, ...)")
    parser.add_argument("--blocks", type=int, nargs="+", help="only these stored blocks")
    parser.add_argument("--families", nargs="+", help="default: those the config enables")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--bootstrap", type=int, default=0)
    parser.add_argument("--baseline", help="another checkout's workflow/ folder to time first, for comparison")
    args = parser.parse_args()
    if args.store:
        OUT.mkdir(parents=True, exist_ok=True)
        result = part_store(args)
        (OUT / "probe_speed_store.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    args.threads = args.threads[0]
    torch.set_num_threads(args.threads)
    path = OUT / "probe_speed.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["note"] = f"{args.threads} CPU threads on a machine shared with other jobs: timings are upper bounds"
    if "a" in args.parts or "b" in args.parts:
        arrays = synthetic()
        if "a" in args.parts:
            result["a_grid_and_knn"] = part_a(arrays)
        if "b" in args.parts:
            result["b_logreg_vs_sklearn"] = logreg_pair(concat(arrays, [(b, "cls") for b in range(4)]), c=1.0)
    if "c" in args.parts:
        result["c_cifar10_effnet_lite0"] = part_c(Path(args.cifar))
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for part, values in result.items():
        if isinstance(values, dict):
            print(f"\n{part}")
            for key, value in values.items():
                print(f"  {key:34s} {value}")


if __name__ == "__main__":
    main()
