"""Peak memory of vocabulary training: the demo corpus vs the same corpus repeated N times (default 4).

Each training runs in a fresh subprocess; its peak RSS comes from
``resource.getrusage(RUSAGE_CHILDREN)`` after it exits. Streaming means the ratio
should stay near 1 (goal <= 1.3) although the sample is N times larger.

    /tmp/venv1/bin/python bench/bench_vocab_memory.py [--ingest /tmp/run1] [--repeat 4] [--vocab-size 16000]

``--ingest`` is an ingested run dir (``xlmflow ingest``); its documents become a
langid-contract stage (lang := claimed_lang) in a temp folder, once plain, once repeated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
from xlmflow.storage import RunDir, load_output, partitions
from xlmflow.tasks.vocab import VocabParams, language_chars, sampled_texts, sampling_rates, train_tokenizer
run, size = RunDir.of(sys.argv[1]), int(sys.argv[2])
p = VocabParams(vocab_size=size)
loc = run.stage("langid"); files = partitions(load_output(loc, "langid"), "clean")
t = time.time()
chars = {l: c for l, (c, _) in language_chars(loc, files, p.batch_rows).items()}
mix = sampling_rates(chars, p.alpha, p.sample_chars)
tally = {}
rates = {lang: m["rate"] for lang, m in mix.items()}
tok = train_tokenizer(sampled_texts(loc, files, rates, p.seed, p.batch_rows, tally), sorted(mix), p)
print(json.dumps({"seconds": round(time.time() - t, 1), "sampled_chars": sum(v["chars"] for v in tally.values()),
                  "vocab": tok.get_vocab_size()}))
"""

MAKE = r"""
import sys
import polars as pl, pyarrow as pa
from xlmflow.storage import RunDir, load_output, read_table, write_table
from xlmflow.tasks.common.runtime import Input, Unit, commit_stage, ensure, stage_unit
src, dst, reps = RunDir.of(sys.argv[1]), RunDir.of(sys.argv[2]), int(sys.argv[3])
m = load_output(src.stage("ingest"), "ingest")
schema = pa.schema([("doc_id", pa.string()), ("text", pa.large_string()), ("lang", pa.string())])
df = pl.concat([pl.from_arrow(read_table(src.stage("ingest").child(f.path), ["doc_id", "text", "claimed_lang"]))
                for f in m.files if "/part-" in f.path]).rename({"claimed_lang": "lang"}).drop_nulls("lang")
refs = []
for (lang,), g in sorted(df.group_by("lang"), key=lambda x: x[0]):
    g = pl.concat([g.with_columns(pl.format("r{}-{}", pl.lit(r), pl.col("doc_id")).alias("doc_id"))
                   for r in range(reps)])
    t = g.select(schema.names).to_arrow().cast(schema)
    unit = Unit(stage="langid", name=f"lang={lang}", out=dst.unit("langid", f"lang={lang}", group="clean").uri,
                code_version="bench", params={"reps": reps},
                inputs={"ingest": {"stage": Input(src.stage("ingest").uri, m.fingerprint)}})

    def build(aside, t=t):
        write_table(aside.path("part-00000.parquet"), t)
        return {"documents": t.num_rows}
    refs.append(ensure(unit, build))
commit_stage(stage_unit(dst.stage("langid").uri, "langid", refs, "bench", {"reps": reps}), refs)
"""


def child_peak(code: str, *args: str) -> tuple[str, int]:
    """Run ``code`` in a fresh interpreter; its stdout and its own peak RSS in MiB.

    RUSAGE_CHILDREN is the max over all waited-for children, so each measured child
    runs from a fresh intermediate process that reports only its own child's peak.
    """
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr[-2000:] if r.returncode else '')\n"
        "print(r.stdout.strip()); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)"
    )
    r = subprocess.run([sys.executable, "-c", wrapper, code, *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"child failed:\n{r.stderr}")
    *out, peak = r.stdout.strip().split("\n")
    return "\n".join(out).strip(), int(peak) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ingest", default="/tmp/run1", help="an ingested run dir (default /tmp/run1)")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=16000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
        for reps in (1, args.repeat):
            run = f"{tmp}/x{reps}"
            child_peak(MAKE, args.ingest, run, str(reps))
            t = time.time()
            out, peak = child_peak(CHILD, run, str(args.vocab_size))
            rows.append((reps, peak, json.loads(out), time.time() - t))
    for reps, peak, info, wall in rows:
        print(
            f"corpus x{reps}: peak RSS {peak} MiB, training {info['seconds']} s, "
            f"sampled chars {info['sampled_chars']}, "
            f"vocab {info['vocab']}"
        )
    print(f"peak ratio x{args.repeat} / x1 = {rows[1][1] / rows[0][1]:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
