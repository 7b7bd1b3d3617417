"""Contamination of a run's train shards, without training a model: the evaluate stage's own measure.

For every eval set of the run's parallel sets (its recorded configuration, or ``--parallel``): the share of
segments, in every language column, that share an n-gram of n text units with the train shards (decoded with the
run's tokenizer; ``tasks.evaluate.contamination.count_contamination``, the function the evaluate stage calls), out
of the segments of at least n units (before 2026-11-30's change to units: n tokens of the run's tokenizer). All of
a set's rows are measured (the evaluate stage reads ``max_segments`` of them).
Beside it, the documents the langid stage held out, per reason and language (``eval_holdout``: equal to a segment;
``eval_overlap``: sharing an n-gram of text units with one).

    xlmflow run --run-dir /tmp/c --only ingest --only langid --only vocab --only shard
    python bench/contamination.py /tmp/c [--ngram 13] [--parallel DIR ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

from tokenizers import Tokenizer

from xlmflow.storage import RunDir, load_output, resolve
from xlmflow.storage.record import read_record
from xlmflow.tasks.common.parallel_sets import languages, parallel_files, read_set, set_name
from xlmflow.tasks.common.specials import TOKENIZER_FILE
from xlmflow.tasks.evaluate.contamination import count_contamination


def measure(run_dir: str, parallel: list[str], n: int) -> dict:
    """{set: the evaluate stage's contamination dict}, and the langid stage's held-out documents."""
    run = RunDir.of(run_dir)
    tok = Tokenizer.from_file(run.stage("vocab").child(TOKENIZER_FILE).path)
    shard = run.stage("shard")
    fingerprint = load_output(shard, "shard").fingerprint
    sets = {}
    for _, loc in parallel_files([resolve(p) for p in parallel], ("eval",)):
        df = read_set(loc)
        sets[set_name(loc)] = count_contamination(
            tok, shard.uri, fingerprint, {c: df[c].to_list() for c in languages(df)}, n
        )
    with run.stage("langid").child("stats.json").open("rb") as f:
        rejected = json.loads(f.read())["rejected"]
    held = {r: rejected.get(r, {}) for r in ("eval_holdout", "eval_overlap")}
    return {"contamination": sets, "held_out": held}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ngram", type=int, default=13, help="text units in a shared n-gram (the evaluate stage's ngram)")
    ap.add_argument("--parallel", action="append", help="parallel sets (default: the run's recorded ones)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    parallel = args.parallel or (read_record(RunDir.of(args.run_dir)) or {}).get("parallel", [])
    if not parallel:
        sys.exit(f"{args.run_dir}: no parallel sets recorded; name them with --parallel")
    out = measure(args.run_dir, parallel, args.ngram)
    for name, c in out["contamination"].items():
        per = ", ".join(f"{lang} {v['contaminated']}/{v['eligible']}" for lang, v in sorted(c["per_language"].items()))
        print(
            f"{name}: {100 * (c['share'] or 0):.2f}% of {c['eligible']} eligible segments contaminated "
            f"({c['contaminated']}; {c['too_short']} shorter than {c['n']} units) | {per}"
        )
    for reason, per in out["held_out"].items():
        print(f"{reason}: {sum(per.values())} documents | " + ", ".join(f"{k} {v}" for k, v in sorted(per.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
