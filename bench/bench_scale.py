"""Cost curves of the data stages (ingest, langid, vocab, shard) at 1x, 4x and 16x the demo corpus: docs/s and peak RSS.

The larger corpora are real text (``bench/_common.py``: every demo document, plus documents spliced from two
different documents of the same file at a random white space, seeded), so exact and near dedup keep them. Every
stage runs as its plain functions (the flow's body without Prefect: one unit per input file, language or shard
on ``XLMFLOW_WORKERS`` threads, then the commit) in a fresh child process, so its peak RSS is its own
(``getrusage(RUSAGE_CHILDREN)`` of a wrapper that waits for that child only); the import floor (a child that
only imports the stage modules) is printed beside. Plain defaults: langid with exact + MinHash near dedup, no
evaluation sets held out; vocab 16k, no parallel sets.

docs/s divides the documents the stage reads (ingest and langid: ingested documents; vocab and shard: clean
ones) by the stage's own seconds (inside the child, imports excluded); docs/CPU-s by its CPU seconds (all its
threads), which a busy shared machine inflates far less than wall time. Flat docs/s = linear cost. Goal: peak
RSS at 16x <= 1.3x that at 1x, every stage. Writes ``scale.json`` and ``scale.png`` (matplotlib) to --out.

    python bench/bench_scale.py [--factors 1 4 16] [--out /tmp/bench-scale] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

STAGES = ["ingest", "langid", "vocab", "shard"]
FLOOR = (
    "import xlmflow.tasks.ingest, xlmflow.tasks.langid, xlmflow.tasks.vocab, xlmflow.tasks.shard, fasttext, tokenizers"
)


def measure(factor: float, out: Path, env: dict) -> dict:
    src = Path(f"/tmp/bench-data/x{factor:g}")
    t = time.perf_counter()
    n_docs, n_bytes = common.write_corpus(src, factor)
    made = time.perf_counter() - t
    run_dir = out / f"run-x{factor:g}"
    shutil.rmtree(run_dir, ignore_errors=True)
    here = str(Path(__file__).resolve().parent / "_common.py")
    rows = {}
    for stage in STAGES:
        args = [f"{src}/*.jsonl"] if stage == "ingest" else []
        stdout, peak, wall, cpu = common.child_peak([sys.executable, here, stage, str(run_dir), *args], env=env)
        info = json.loads(stdout.splitlines()[-1])
        rows[stage] = {
            "seconds": info["seconds"],
            "cpu": info["cpu"],
            "documents": info["documents"],
            "peak_mib": peak,
            "wall": wall,
            "child_cpu": cpu,
        }
        print(
            f"  x{factor:<5g} {stage:7s} {info['documents']:>10,} docs {info['seconds']:8.1f} s "
            f"{info['documents'] / info['seconds']:>10,.0f} docs/s  "
            f"{info['documents'] / info['cpu']:>9,.0f} docs/CPU-s peak {peak:6,} MiB",
            flush=True,
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # the 16x run holds several GB
    return {"factor": factor, "documents": n_docs, "bytes": n_bytes, "corpus_seconds": made, "stages": rows}


def plot(results: list[dict], floor: int, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed"
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["factor"] for r in results]
    for i, stage in enumerate(STAGES):
        st = [r["stages"][stage] for r in results]
        a.plot(xs, [s["documents"] / s["cpu"] for s in st], "o-", color=f"C{i}", label=f"{stage} (per CPU-s)")
        a.plot(
            xs, [s["documents"] / s["seconds"] for s in st], "x--", color=f"C{i}", alpha=0.5, label=f"{stage} (wall)"
        )
        b.plot(xs, [r["stages"][stage]["peak_mib"] for r in results], "o-", label=stage)
    b.axhline(floor, color="grey", ls=":", label="imports only")
    for ax, title in ((a, "throughput (flat = linear cost)"), (b, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}x" for x in xs])
        ax.set_xlabel("corpus size (demo corpora)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_yscale("log")
    a.set_ylabel("documents / s")
    b.set_ylim(bottom=0)
    fig.suptitle(f"xlmflow data stages, {os.cpu_count()} CPUs, {common.workers()} worker threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factors", type=float, nargs="+", default=[1, 4, 16])
    ap.add_argument("--quick", action="store_true", help="smoke size: factors 0.02 and 0.05")
    ap.add_argument("--out", help="where runs, scale.json and scale.png go (default /tmp/bench-scale[-quick])")
    args = ap.parse_args()
    factors = [0.02, 0.05] if args.quick else sorted(args.factors)
    out = Path(args.out or ("/tmp/bench-scale-quick" if args.quick else "/tmp/bench-scale"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_LOGGING_LEVEL="WARNING")
    env.setdefault("XLMFLOW_PREFECT_HOME", tempfile.mkdtemp(prefix="bench-scale-prefect-"))
    _, floor, _, _ = common.child_peak([sys.executable, "-c", FLOOR], env=env)
    print(f"{os.cpu_count()} CPUs, {common.workers()} worker threads; import floor {floor} MiB", flush=True)
    results = [measure(f, out, env) for f in factors]
    base = results[0]
    print(
        f"\n{'stage':8s} {'size':>6s} {'documents':>11s} {'seconds':>8s} {'docs/s':>10s} {'x base':>7s} "
        f"{'docs/CPU-s':>10s} {'x base':>7s} {'peak MiB':>9s} {'x base':>7s} {'above floor':>12s}"
    )
    verdicts = {}
    for stage in STAGES:
        b = base["stages"][stage]
        for r in results:
            s = r["stages"][stage]
            rate, base_rate = s["documents"] / s["seconds"], b["documents"] / b["seconds"]
            crate, base_crate = s["documents"] / s["cpu"], b["documents"] / b["cpu"]
            above = (s["peak_mib"] - floor) / max(b["peak_mib"] - floor, 1)
            print(
                f"{stage:8s} {r['factor']:>5g}x {s['documents']:>11,} {s['seconds']:8.1f} {rate:>10,.0f} "
                f"{rate / base_rate:7.2f} {crate:>10,.0f} {crate / base_crate:7.2f} "
                f"{s['peak_mib']:>9,} {s['peak_mib'] / b['peak_mib']:7.2f} {above:12.2f}"
            )
        last = results[-1]["stages"][stage]
        verdicts[stage] = last["peak_mib"] / b["peak_mib"]
    span = f"{results[-1]['factor']:g}x / {base['factor']:g}x"
    for stage, ratio in verdicts.items():
        print(f"peak RSS {span} {stage:7s}: {ratio:.2f}  ({'met' if ratio <= 1.3 else 'MISSED'}: goal <= 1.3)")
    (out / "scale.json").write_text(json.dumps({"floor_mib": floor, "results": results}, indent=1))
    print(plot(results, floor, out / "scale.png"))
    print(f"results: {out / 'scale.json'}")


if __name__ == "__main__":
    main()
