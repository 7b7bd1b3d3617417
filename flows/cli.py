"""``xlmflow``: run the whole pipeline or any single stage; every invocation is a Prefect flow run."""

from __future__ import annotations

import argparse
import logging
import sys

import xlmflow  # noqa: F401  (sets Prefect's offline defaults before Prefect is imported)

STAGE_HELP = {
    "run": "run every stage in order (ingest) on the configured corpus, the bundled demo by default",
    "ingest": "read text/JSONL/Parquet/datasets into normalised Parquet documents",
    "status": "show what each stage of a run directory has committed",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlmflow", description="Multilingual corpus -> cross-lingual GPT-style model, "
                                "as Prefect flows of cached, retryable tasks.")
    sub = p.add_subparsers(dest="command", metavar="STAGE", required=True)
    for name, text in STAGE_HELP.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--run-dir", default="runs/demo", help="run directory (local path or fsspec URL; default runs/demo)")
        if name == "status":
            continue
        sp.add_argument("--config", help="TOML file with one table per stage (see README)")
        sp.add_argument("--dask", metavar="ADDRESS", help="run units on a Dask cluster (scheduler address, or 'local')")
        if name == "ingest":
            g = sp.add_argument_group("sources (replace the configured ones)")
            g.add_argument("--source", action="append", help="file, folder, glob, fsspec URL or hf:NAME (repeatable)")
            g.add_argument("--format", choices=["auto", "text", "jsonl", "parquet", "hf-disk", "hf"], default="auto")
            g.add_argument("--text-field", default="text", help="JSON field / column holding the text")
            g.add_argument("--lang-field", default="lang", help="JSON field / column holding the claimed language")
            g.add_argument("--lang", help="claimed language for records that carry none")
            g.add_argument("--paragraphs", action="store_true", help="text files: one document per blank-line paragraph")
            g.add_argument("--split", help="datasets: split to read (default: all)")
            sp.add_argument("--bad-records", choices=["quarantine", "fail"], help="set malformed records aside (default) or fail")
    return p


def config_from(args):
    from xlmflow.flows.config import PipelineConfig
    from xlmflow.tasks.ingest import Source

    cfg = PipelineConfig.load(args.config)
    if getattr(args, "source", None):
        cfg.ingest.sources = [Source(path=s, format=args.format, text_field=args.text_field, lang_field=args.lang_field,
                                     lang=args.lang, paragraphs=args.paragraphs, split=args.split) for s in args.source]
    if getattr(args, "bad_records", None):
        cfg.ingest.bad_records = args.bad_records
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return status(args.run_dir)
    from xlmflow.storage import ManifestError
    from xlmflow.tasks.readers import InputError

    from xlmflow.flows.pipeline import FLOWS

    fl = FLOWS[args.command]
    if args.dask:
        fl = fl.with_options(task_runner=_dask_runner(args.dask))
    try:
        fl(run_dir=args.run_dir, config=config_from(args))
    except (InputError, ManifestError, ValueError) as e:
        print(f"xlmflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    return status(args.run_dir)


def _dask_runner(address: str):
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        sys.exit("xlmflow: --dask needs prefect-dask: pip install 'xlmflow[dask]'")
    return DaskTaskRunner() if address == "local" else DaskTaskRunner(address=address)


def status(run_dir: str) -> int:
    from xlmflow.storage import STAGES, RunDir, read_manifest

    run = RunDir.of(run_dir)
    for stage in STAGES:
        m = read_manifest(run.stage(stage))
        if m is None:
            print(f"{stage:8s} -")
            continue
        size = sum(f.bytes for f in m.files)
        print(f"{stage:8s} {m.fingerprint[:12]}  {len(m.files)} files, {m.rows} rows, {size / 1e6:.1f} MB  "
              f"{', '.join(f'{k}={v}' for k, v in m.stats.items() if isinstance(v, int))}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
