"""Peak memory of langid's dedup unit for one language: the demo's English (1x) vs 16x as many documents,
in hash buckets on scratch, one at a time (the stage) side by side with the whole language in memory (the
definition, and the stage before).

Both corpora are made alike, of real text that dedup does not collapse: every document is a seeded
recombination of four sentences drawn from different English documents of the demo (1x: as many documents
as the demo's English). Each measurement runs in
a fresh subprocess; peak RSS is ``ru_maxrss`` of that child. Prints documents, seconds, peak RSS and the
ratios to the smallest scale. Peak = imports (~170 MiB) + one batch's scratch (fixed) + one hash bucket
(fixed by ``BUCKET_DOCS``): flat once a language fills a bucket.

    .venv/bin/python bench/bench_dedup_memory.py [--scales 1,16,48] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, polars as pl, pyarrow.parquet as pq
from xlmflow.storage import Location, read_batches
from xlmflow.tasks import langid
from xlmflow.tasks.langid import dedup
from xlmflow.tasks.langid.dedup import DedupParams
from xlmflow.tasks.common.runtime import Input, Unit

path, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
p = DedupParams()
t = time.time()
if mode == "buckets":  # the stage's own unit
    unit = Unit(stage="langid", name="dedup-en", out=out, code_version="bench",
                params={"dedup": p.model_dump(), "lang": "en", "min_lang_docs": 1},
                inputs={"kept": {"part": Input(path, "bench")}},
                options={"expected_docs": pq.ParquetFile(path).metadata.num_rows})  # as plan_dedup sets it
    langid.dedup_unit(unit)
    result = {"documents": None}
else:  # every signature and key in memory, as the unit did before spilling
    ids, keys, sigs = [], [], []
    for b in read_batches(Location(path), ["doc_id", "text"]):
        norm = pl.from_arrow(b.column(1)).rename("text").to_frame().select(dedup.normalise(pl.col("text")))["text"]
        ids.append(pl.from_arrow(b.column(0)).rename("doc_id"))
        keys.append(dedup.text_keys(norm))
        sigs.append(dedup.minhash(norm, p))
    doc_id = pl.concat(ids)
    order = doc_id.arg_sort().to_numpy()
    sig = np.concatenate(sigs)[order]
    ex = dedup.exact_duplicates(doc_id.gather(order), pl.concat(keys)[order])
    alive = ~doc_id.gather(order).is_in(ex["doc_id"].implode()).to_numpy()
    dedup.near_duplicates(sig[alive], p)
print(json.dumps({"seconds": round(time.time() - t, 2),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

MAKE = r"""
import sys
import numpy as np, polars as pl, pyarrow as pa
from xlmflow import PACKAGE_ROOT
from xlmflow.storage import Location, write_table
scale, out = float(sys.argv[1]), sys.argv[2]
files = sorted((PACKAGE_ROOT / "data" / "demo").glob("*-en.jsonl.zst"))
df = pl.concat([pl.read_ndjson(f).select("text") for f in files])
n = int(len(df) * scale)
# every scale alike: sentences of different documents, recombined (real text, no duplicates)
sents = df.select(pl.col("text").str.split(". ").explode()).filter(pl.col("text").str.len_chars() > 20)["text"]
rng = np.random.default_rng(0)
k = 4
pick = rng.integers(0, len(sents), size=(n, k))
texts = pl.DataFrame({f"s{j}": sents.gather(pick[:, j]) for j in range(k)}).select(
    pl.concat_str([pl.col(f"s{j}") for j in range(k)], separator=". ").alias("text"))["text"]
m = len(texts)
table = pl.DataFrame({
    "doc_id": [f"en-{i:09d}" for i in range(m)],
    "text": texts, "lang": ["en"] * m, "lid_prob": np.ones(m, np.float32), "claimed_lang": ["en"] * m,
    "source": ["bench"] * m}).to_arrow()
from xlmflow.tasks.langid import KEPT_SCHEMA
write_table(Location.of(out), table.select(KEPT_SCHEMA.names).cast(KEPT_SCHEMA))
print(m)
"""


def run(code: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1,16,48", help="corpus sizes, in multiples of the demo's English")
    ap.add_argument("--in-memory-up-to", type=float, default=16, help="largest scale to run in memory too")
    ap.add_argument("--quick", action="store_true", help="0.25x vs 1x: a smoke test")
    a = ap.parse_args()
    scales = [0.25, 1.0] if a.quick else [float(x) for x in a.scales.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        for scale in scales:
            path = str(Path(tmp) / f"en-{scale}.parquet")
            docs = int(run(MAKE, str(scale), path))
            for mode in ("buckets", "in-memory"):
                if mode == "in-memory" and scale > a.in_memory_up_to:
                    continue
                r = json.loads(run(CHILD, path, str(Path(tmp) / f"out-{scale}-{mode}"), mode))
                rows.append({"scale": scale, "mode": mode, "documents": docs} | r)
                print(json.dumps(rows[-1]), flush=True)
            Path(path).unlink()
    peak = {(r["scale"], r["mode"]): r["peak_mib"] for r in rows}
    base = scales[0]
    for (scale, mode), mib in sorted(peak.items()):
        print(f"{mode:9s} {scale:g}x: peak RSS {mib:.0f} MiB = {mib / peak[base, mode]:.2f}x of {base:g}x")
    both = [s for s in scales if (s, "in-memory") in peak]
    print(f"at {both[-1]:g}x: buckets / in-memory = {peak[both[-1], 'buckets'] / peak[both[-1], 'in-memory']:.2f}x")


if __name__ == "__main__":
    main()
