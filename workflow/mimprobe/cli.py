"""`mimprobe <verb>`: the commands the Snakemake rules run (and that users can run by hand)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
import traceback

from . import __version__, layout
from .errors import MimprobeError


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None


def cmd_download(args):
    from .datasets.cifar import fetch_cifar_archive

    path = fetch_cifar_archive(args.kind, os.path.dirname(args.out) or ".", None, True)
    print(f"{path}: the md5-checked {args.kind} archive")


def cmd_prepare_shards(args):
    from .datasets import kind_of
    from .shards import prepare_shards

    if args.archive:
        args.dataset["archive"] = args.archive
    elif kind_of(args.dataset).archive and not args.dataset.get("archive"):  # by hand: fetch it first
        from .datasets.cifar import fetch_cifar_archive

        args.dataset["archive"] = str(fetch_cifar_archive(args.dataset["kind"], args.resources, None, True))
    meta = prepare_shards(args.dataset, args.out_dir, args.seed, args.expect)
    counts = {s: v["count"] for s, v in meta["splits"].items()}
    print(f"wrote {len(meta['shards'])} shards to {args.out_dir}: {counts}")


def cmd_synthetic_cifar(args):
    from .synthetic import synthetic_cifar100, write_cifar100_archive

    write_cifar100_archive(args.out, synthetic_cifar100(args.train, args.test, args.seed))
    print(f"wrote {args.out}: {args.train} train and {args.test} test images, 100 classes in 20 superclasses")


def cmd_init_store(args):
    from .extract import init_store

    init_store(args.store, args.layout, args.backbone, args.features, args.seed)
    print(f"created {args.store}")


def cmd_embed_shards(args):
    from .extract import embed_shards

    lane = embed_shards(args.store, args.shards, args.flag, args.backbone, args.features, args.seed, args.threads)
    for record in lane["shards"]:
        print(f"{record['shard']}: {record['stop'] - record['start']} images on {lane['device']} "
              f"({record['images_per_second']} img/s)")


def cmd_check_store(args):
    from .atomic import write_json
    from .store import verify_store

    summary = verify_store(args.store, args.flags)
    write_json(args.out, summary)
    print(f"{args.store}: {summary['regions_verified']} regions verified")


def cmd_probe(args):
    from .probes import family_module
    from .probes.common import run_family
    from .report.table import best_by_comparison

    module = family_module(args.family)
    context = {"backbone": args.backbone, "dataset": args.dataset}
    verified = json.loads(open(args.verified).read()) if args.verified else None
    payload = run_family(args.family, module, args.store, args.meta, args.out, args.params, args.seed,
                         args.bootstrap, context, verified, args.device, args.threads)
    where = f"{args.family} on {args.backbone}/{args.dataset}"
    if not payload["results"]:
        reads = getattr(module, "POOLINGS", None)
        print(f"{where}: no results: no stored array has a pooling this family reads"
              + (f" ({', '.join(reads)})" if reads else "") + "; the report skips it")
        return
    lines = []
    for label, best in best_by_comparison(args.family, payload["results"]).items():
        metric, stat = next(iter(best["test"].items()))  # top1, or acc for k-means
        lines.append(f"{label}: block {best['block']} {best['pooling']} {best['setting']} "
                     f"-> test {metric} {100 * stat['value']:.1f}%")
    summary = lines[0].partition(": ")[2] if len(lines) == 1 else "\n  " + "\n  ".join(lines)
    print(f"{where}: {len(payload['results'])} results; best on validation: {summary}")


def cmd_report(args):
    from .report.terminal import headline_message
    from .report.write import write_report

    table = write_report(args.probe_jsons, args.out_dir, args.embeddings)
    print(f"wrote {args.out_dir}/metrics.csv ({len(table)} rows), metrics.md, headline.html, per_block.html, "
          "headline.txt and plots/")
    print(headline_message(args.out_dir))


def cmd_predict(args):
    from .predict import format_predictions, predict

    predictions = predict(args.images, args.backbone, args.probe, args.results, args.block, args.pooling,
                          args.dataset, args.config)
    print(json.dumps(predictions, indent=2) if args.json else format_predictions(predictions))


def cmd_validate_config(args):
    from .config import load_config

    config = load_config(args.config)
    print(json.dumps(config, indent=2) if args.show else f"{args.config}: valid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimprobe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mimprobe {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("download", help="fetch an official CIFAR archive (md5-checked)")
    p.add_argument("--kind", required=True, help="a dataset kind read from an archive (cifar100, cifar10)")
    p.add_argument("--out", required=True, help="where the archive goes (its folder is the download folder)")
    p.set_defaults(run=cmd_download)

    p = verbs.add_parser("prepare-shards", help="cut a dataset into uint8 shards + meta.json")
    p.add_argument("--dataset", type=_json, required=True, help="the dataset's config entry as JSON")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--resources", default="resources", help="where a missing CIFAR archive is downloaded to")
    p.add_argument("--archive", nargs="?", const="",
                   help="the CIFAR archive to read (the dataset's own, or downloaded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--expect", type=_json,
                   help='images per split the workflow planned, e.g. {"train": 50000, "test": 10000}')
    p.set_defaults(run=cmd_prepare_shards)

    p = verbs.add_parser("synthetic-cifar", help="write a CIFAR-100-format archive of class-structured images")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_synthetic_cifar)

    for verb, func, help_text in (("init-store", cmd_init_store, "create the empty Zarr store"),
                                  ("embed-shards", cmd_embed_shards, "embed shards into their store regions")):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("--store", required=True)
        p.add_argument("--backbone", type=_json, required=True, help="the backbone's config entry as JSON")
        p.add_argument("--features", type=_json, required=True, help="the features config as JSON")
        p.add_argument("--seed", type=int, default=0)
        if verb == "init-store":
            p.add_argument("--layout", type=_json, required=True,
                           help='the planned splits, e.g. {"sizes": {"train": 50000, "test": 10000}, '
                                '"shard_size": 1000, "image_shape": [32, 32, 3]}')
        if verb == "embed-shards":
            p.add_argument("shards", nargs="+", help="shard files, each embedded into its own region")
            p.add_argument("--flag", required=True, help="flag file written once every region is verified")
            p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
        p.set_defaults(run=func)

    p = verbs.add_parser("check-store", help="re-verify every chunk region of a store")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("flags", nargs="+")
    p.set_defaults(run=cmd_check_store)

    p = verbs.add_parser("probe", help="run one probe family on every stored block")
    p.add_argument("family")
    p.add_argument("--store", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--params", type=_json, default={})
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--backbone", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--verified", help="check_store's summary (.ok.json): every array read is checked against it")
    p.add_argument("--device", default="auto",
                   help="probes.device: auto (the GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch, BLAS and OpenMP (0: torch's default); results do not depend on it")
    p.set_defaults(run=cmd_probe)

    p = verbs.add_parser("report", help="aggregate probe results into tables and plots")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--embeddings", default=layout.EMBEDDINGS,
                   help="feature stores: block counts, model kinds and the t-SNE map")
    p.add_argument("probe_jsons", nargs="+")
    p.set_defaults(run=cmd_report)

    p = verbs.add_parser("predict", help="top-5 classes of new images from a finished run's backbone and head")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", required=True, help="backbone name as in the config / results/probes/")
    p.add_argument("--probe", required=True, help="probe family whose head to use (linear, knn, ...)")
    p.add_argument("--block", type=int, help="stored block index (default: the best on validation)")
    p.add_argument("--pooling", help="cls, mean or flat (default: the best on validation)")
    p.add_argument("--dataset", help="needed only when the backbone was probed on several datasets")
    p.add_argument("--results", default=layout.RESULTS, help="the run's results folder")
    p.add_argument("--config", help="a config whose backbone entry (model, weights) replaces the one the run recorded")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_predict)

    p = verbs.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config")
    p.add_argument("--show", action="store_true", help="print the config with defaults filled in")
    p.set_defaults(run=cmd_validate_config)
    return parser


def describe_failure(err: BaseException) -> str:
    """One line for any failure: what went wrong and what to do."""
    if isinstance(err, MimprobeError):
        return str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
        return (f"the disk is full{where}. Free space (or move results/ to a larger disk), then rerun: "
                "outputs are written whole or not at all.")
    if isinstance(err, MemoryError):
        return "out of memory. Give the job more memory (profile mem_mb), or lower batch sizes in the config."
    if isinstance(err, OSError):
        return f"{err.strerror or err} ({err.filename or 'no file named'}). Check the path and its permissions."
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    return (f"internal error {type(err).__name__}: {err}{where}. This is a bug: please report it with this "
            "line; rerun with MIMPROBE_TRACEBACK=1 for the full traceback.")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    began = time.perf_counter()
    try:
        args.run(args)
    except KeyboardInterrupt:
        print(f"mimprobe {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("MIMPROBE_TRACEBACK"):
            traceback.print_exc()
        print(f"mimprobe {args.verb}: error: {describe_failure(err)}", file=sys.stderr)
        return 1
    print(f"mimprobe {args.verb}: done in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
