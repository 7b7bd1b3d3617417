"""Ingest memory is bounded by the batch, not the input: peak RSS at 1x and Nx the same input.

Builds one JSONL file from the demo corpus (N copies concatenated), ingests each size in a
fresh subprocess (plain functions, no Prefect) and prints peak RSS side by side with the
ratio, plus the RSS of a process that only imports the same modules (the floor).

    python bench/bench_ingest_memory.py [--copies 8]
"""

from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import resource, sys
from xlmflow.storage import RunDir
from xlmflow.tasks.ingest import IngestParams, Source, ingest_unit, plan
if sys.argv[1] != "-":
    units = plan(RunDir.of(sys.argv[2]), IngestParams(sources=[Source(path=sys.argv[1], format="jsonl")]))
    for u in units:
        ingest_unit(u)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def peak_mb(src: str, run_dir: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, src, run_dir], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    one = b"".join(
        zstandard.decompress(Path(p).read_bytes(), max_output_size=1 << 30)
        for p in sorted(glob.glob(str(ROOT / "data/demo/*.jsonl.zst")))
    )
    (tmp / "x1.jsonl").write_bytes(one)
    with open(tmp / f"x{args.copies}.jsonl", "wb") as f:
        for _ in range(args.copies):
            f.write(one)
    floor = peak_mb("-", "-")
    small = peak_mb(str(tmp / "x1.jsonl"), str(tmp / "run1"))
    big = peak_mb(str(tmp / f"x{args.copies}.jsonl"), str(tmp / "runN"))
    print(f"input: {len(one) / 1e6:.0f} MB of JSONL vs {args.copies}x that ({args.copies * len(one) / 1e6:.0f} MB)")
    print(f"peak RSS  imports only: {floor} MB   1x: {small} MB   {args.copies}x: {big} MB")
    above = (big - floor) / max(small - floor, 1)
    print(f"ratio {args.copies}x / 1x: {big / small:.2f}   (above the import floor: {above:.2f})")


if __name__ == "__main__":
    main()
