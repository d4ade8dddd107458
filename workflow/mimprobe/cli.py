"""`mimprobe <verb>`: the commands the Snakemake rules run (and that users can run by hand)."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import MimprobeError


def _json(text: str):
    return json.loads(text)


def cmd_prepare_shards(args):
    from .shards import prepare_shards

    meta = prepare_shards(args.dataset, args.out_dir, args.resources, args.seed)
    counts = {s: v["count"] for s, v in meta["splits"].items()}
    print(f"wrote {len(meta['shards'])} shards to {args.out_dir}: {counts}")


def cmd_init_store(args):
    from .extract import init_store

    init_store(args.store, args.meta, args.backbone, args.features, args.seed)
    print(f"created {args.store}")


def cmd_embed_chunk(args):
    from .extract import embed_chunk

    record = embed_chunk(args.store, args.shard, args.meta, args.flag, args.backbone, args.features, args.seed,
                         args.threads)
    print(f"{record['shard']}: {record['stop'] - record['start']} images on {record['device']} "
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

    module = family_module(args.family)
    context = {"backbone": args.backbone, "dataset": args.dataset}
    verified = json.loads(open(args.verified).read()) if args.verified else None
    payload = run_family(args.family, module, args.store, args.meta, args.out, args.params, args.seed,
                         args.bootstrap, context, verified, args.device, args.threads)
    best = max(payload["results"], key=lambda r: max(r["validation"].values(), default=0.0))
    metric, stat = next(iter(best["test"].items()))  # top1, or acc for k-means
    print(f"{args.family} on {args.backbone}/{args.dataset}: {len(payload['results'])} results; "
          f"best on validation: block {best['block']} {best['pooling']} {best['setting']} "
          f"-> test {metric} {100 * stat['value']:.1f}%")


def cmd_report(args):
    from .report import write_report

    table = write_report(args.probe_jsons, args.out_dir, args.embeddings)
    print(f"wrote {args.out_dir}/metrics.csv ({len(table)} rows), metrics.md and plots/")


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
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("prepare-shards", help="cut a dataset into uint8 shards + meta.json")
    p.add_argument("--dataset", type=_json, required=True, help="the dataset's config entry as JSON")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--resources", default="resources")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_prepare_shards)

    for verb, func, help_text in (("init-store", cmd_init_store, "create the empty Zarr store"),
                                  ("embed-chunk", cmd_embed_chunk, "embed one shard into its store region")):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("--store", required=True)
        p.add_argument("--meta", required=True)
        p.add_argument("--backbone", type=_json, required=True, help="the backbone's config entry as JSON")
        p.add_argument("--features", type=_json, required=True, help="the features config as JSON")
        p.add_argument("--seed", type=int, default=0)
        if verb == "embed-chunk":
            p.add_argument("--shard", required=True)
            p.add_argument("--flag", required=True, help="flag file written once the region is verified")
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
    p.add_argument("--device", default="auto", help="probes.device: auto (the GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch, BLAS and OpenMP (0: torch's default); results do not depend on it")
    p.set_defaults(run=cmd_probe)

    p = verbs.add_parser("report", help="aggregate probe results into tables and plots")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--embeddings", default="results/embeddings", help="feature stores, for the PCA map")
    p.add_argument("probe_jsons", nargs="+")
    p.set_defaults(run=cmd_report)

    p = verbs.add_parser("predict", help="top-5 classes of new images from a finished run's backbone and head")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", required=True, help="backbone name as in the config / results/probes/")
    p.add_argument("--probe", required=True, help="probe family whose head to use (linear, knn, ...)")
    p.add_argument("--block", type=int, help="stored block index (default: the best on validation)")
    p.add_argument("--pooling", help="cls, mean or flat (default: the best on validation)")
    p.add_argument("--dataset", help="needed only when the backbone was probed on several datasets")
    p.add_argument("--results", default="results", help="the run's results folder")
    p.add_argument("--config", help="the run's config, for local backbone weights (optional)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_predict)

    p = verbs.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config")
    p.add_argument("--show", action="store_true", help="print the config with defaults filled in")
    p.set_defaults(run=cmd_validate_config)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except MimprobeError as err:
        print(f"mimprobe {args.verb}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
