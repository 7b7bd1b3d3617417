"""``xlmflow``: run the whole pipeline or any single stage; every invocation is a Prefect flow run."""

from __future__ import annotations

import argparse
import sys

import xlmflow  # noqa: F401  (sets Prefect's offline defaults before Prefect is imported)

STAGES = {
    "run": "run every stage in order (ingest, langid, vocab, shard) on the configured corpus, the demo by default",
    "ingest": "read text/JSONL/Parquet/datasets into normalised Parquet documents",
    "langid": "fastText language ID, per-language thresholds, quality filters, exact and MinHash dedup",
    "vocab": "train one byte-level BPE on a temperature-sampled language mix, alignment table, fairness report",
    "shard": "tokenise the clean corpus into train/valid Parquet token shards with a checksummed manifest",
    "status": "show what each stage of a run directory has committed",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlmflow", description="Multilingual corpus -> cross-lingual GPT-style model, "
                                "as Prefect flows of cached, retryable tasks. Flags override the --config file.")
    sub = p.add_subparsers(dest="command", metavar="STAGE", required=True)
    for name, text in STAGES.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--run-dir", default="runs/demo", help="run directory (local path or fsspec URL; default runs/demo)")
        if name == "status":
            continue
        sp.add_argument("--config", help="TOML file with one table per stage (see README)")
        sp.add_argument("--dask", metavar="ADDRESS", help="run units on a Dask cluster (scheduler address, or 'local')")
        for stage, add in ADD_FLAGS.items():
            if name in (stage, "run"):
                add(sp.add_argument_group(f"{stage} options"))
    return p


def _ingest_flags(g) -> None:
    g.add_argument("--source", action="append", help="file, folder, glob, fsspec URL or hf:NAME (repeatable; replaces the configured sources)")
    g.add_argument("--format", choices=["auto", "text", "jsonl", "parquet", "hf-disk", "hf"], default="auto")
    g.add_argument("--text-field", default="text", help="JSON field / column holding the text")
    g.add_argument("--lang-field", default="lang", help="JSON field / column holding the claimed language")
    g.add_argument("--lang", help="claimed language for records that carry none")
    g.add_argument("--paragraphs", action="store_true", help="text files: one document per blank-line paragraph")
    g.add_argument("--split", help="datasets: split to read (default: all)")
    g.add_argument("--bad-records", choices=["quarantine", "fail"], help="set malformed records aside (default) or fail")


def _langid_flags(g) -> None:
    g.add_argument("--model", help="fastText LID model file (default: the bundled lid.176.ftz)")
    g.add_argument("--threshold", type=float, help="least top-1 probability to accept a label (default 0.5)")
    g.add_argument("--lang-threshold", action="append", metavar="XX=P", help="per-language threshold (repeatable)")
    g.add_argument("--keep-langs", help="comma-separated languages to keep (default: all)")
    g.add_argument("--mismatch", choices=["relabel", "drop"], help="claimed != detected language: relabel (default) or drop")
    g.add_argument("--min-lang-docs", type=int, help="drop languages with fewer clean documents (default 100)")
    g.add_argument("--no-near-dedup", action="store_true", help="exact dedup only")


def _vocab_flags(g) -> None:
    g.add_argument("--vocab-size", type=int, help="ids in all (default 16000)")
    g.add_argument("--alpha", type=float, help="language sampling exponent q_i ~ p_i^alpha (default 0.3)")
    g.add_argument("--vocab-seed", type=int, help="seed of the training sample")
    g.add_argument("--parallel", help="folder/URL of <set>.train/.eval.parquet parallel sets (default: bundled)")
    g.add_argument("--dictionary", help="TSV of word translations (src<TAB>tgt) to add as alignment evidence")


def _shard_flags(g) -> None:
    g.add_argument("--valid-fraction", type=float, help="share of each language held out for validation (default 0.01)")
    g.add_argument("--min-valid-docs", type=int, help="validation documents per language at least (default 100)")
    g.add_argument("--shard-docs", type=int, help="documents per shard (default 100000)")


ADD_FLAGS = {"ingest": _ingest_flags, "langid": _langid_flags, "vocab": _vocab_flags, "shard": _shard_flags}


def config_from(args):
    """The --config file (or defaults) with the command-line flags laid over it."""
    from xlmflow.flows.config import PipelineConfig
    from xlmflow.tasks.ingest import Source

    cfg = PipelineConfig.load(args.config)
    a = vars(args)
    if a.get("source"):
        cfg.ingest.sources = [Source(path=s, format=args.format, text_field=args.text_field, lang_field=args.lang_field,
                                     lang=args.lang, paragraphs=args.paragraphs, split=args.split) for s in args.source]
    if a.get("lang_threshold"):
        cfg.langid.thresholds = {**cfg.langid.thresholds, **_pairs(args.lang_threshold)}
    if a.get("keep_langs"):
        cfg.langid.keep_langs = [x.strip() for x in args.keep_langs.split(",") if x.strip()]
    if a.get("no_near_dedup"):
        cfg.langid.dedup.near = False
    for section, flag, field in [("ingest", "bad_records", "bad_records"), ("langid", "model", "model_path"),
                                 ("langid", "threshold", "threshold"), ("langid", "mismatch", "mismatch"),
                                 ("langid", "min_lang_docs", "min_lang_docs"), ("vocab", "vocab_size", "vocab_size"),
                                 ("vocab", "alpha", "alpha"), ("vocab", "vocab_seed", "seed"), ("vocab", "parallel", "parallel"),
                                 ("vocab", "dictionary", "dictionary"), ("shard", "valid_fraction", "valid_fraction"),
                                 ("shard", "min_valid_docs", "min_valid_docs"), ("shard", "shard_docs", "shard_docs")]:
        if a.get(flag) is not None:
            setattr(getattr(cfg, section), field, a[flag])
    return type(cfg).model_validate(cfg.model_dump())  # re-validate what the flags set


def _pairs(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        lang, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--lang-threshold {item!r}: write it as LANG=PROBABILITY, e.g. hr=0.3")
        out[lang.strip()] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `xlmflow status | head` ends quietly
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return status(args.run_dir)
    from pydantic import ValidationError

    from xlmflow.flows.pipeline import STAGE_FLOWS, on, pipeline
    from xlmflow.storage import ManifestError
    from xlmflow.tasks.readers import InputError

    try:
        cfg = config_from(args)
        if args.command == "run":
            pipeline(run_dir=args.run_dir, config=cfg, dask=args.dask)
        else:
            on(STAGE_FLOWS[args.command], args.dask)(run_dir=args.run_dir, params=getattr(cfg, args.command))
    except (InputError, ManifestError, ValidationError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"xlmflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    return status(args.run_dir)


def status(run_dir: str) -> int:
    from xlmflow.storage import STAGES as STAGE_DIRS, RunDir, read_manifest

    run = RunDir.of(run_dir)
    for stage in STAGE_DIRS:
        m = read_manifest(run.stage(stage))
        if m is None:
            print(f"{stage:8s} -")
            continue
        size = sum(f.bytes for f in m.files)
        print(f"{stage:8s} {m.fingerprint[:12]}  {len(m.files)} files, {m.rows} rows, {size / 1e6:.1f} MB  "
              f"{', '.join(f'{k}={v}' for k, v in m.stats.items() if isinstance(v, int))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
