"""The data stages on a local Dask cluster (1 and 2 worker processes) against the default thread runner: same bytes,
and the speed-up per stage.

Each mode runs ``xlmflow run --only ingest --only langid --only vocab --only shard --config bench.toml`` into a
fresh run directory on the same corpus (the demo corpus as JSONL times ``--factor``; plain defaults). Threads:
the default runner (``XLMFLOW_WORKERS`` threads, default CPU count). Dask: this script starts
``distributed.LocalCluster(n_workers=N, threads_per_worker=1)`` (start-up timed apart) and passes its scheduler
address as ``--dask tcp://...``, which is how a user points xlmflow at a cluster (``--dask local`` lets
prefect-dask size one itself; ``--with-local`` adds that mode). Compared: wall time, each stage's subflow time and
the time its task bodies run (from this benchmark's own Prefect database), and the sha256 of every file in every
stage's manifest (must be equal to the thread run's). Also measured: a bare Dask round trip (``client.submit`` of
a no-op) and a Prefect task's cost on Dask beyond its body, to say where Dask pays.

    python bench/bench_dask.py [--factor 1] [--workers 1 2] [--with-local] [--quick]

Needs prefect-dask: ``pip install -e '.[dask]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from noop_rerun import busy, run_pipeline, timeline  # noqa: E402

STAGES = ["ingest", "langid", "vocab", "shard"]


def one_run(name: str, cmd: list[str], run_dir: Path, env: dict) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    t0, wall, _ = run_pipeline([*cmd, "--run-dir", str(run_dir)], env)
    flows = {f["flow"]: f for f in timeline(t0, env)}
    stages = {}
    for s in STAGES:
        f = flows[s]
        spans = [(a, b) for _, a, b, state in f["tasks"] if a and b]
        lengths = [b - a for a, b in spans]
        stages[s] = {
            "subflow": f["end"] - f["start"],
            "bodies": busy(spans),
            "tasks": len(f["tasks"]),
            "mean_task": statistics.mean(lengths) if lengths else 0.0,
        }
    hashes = common.manifest_hashes(str(run_dir), STAGES)
    from xlmflow.storage import RunDir, load_output

    code = {s: load_output(RunDir.of(str(run_dir)).stage(s), s).code_version for s in STAGES}
    print(
        f"  {name:22s} wall {wall:7.1f} s  " + "  ".join(f"{s} {stages[s]['subflow']:.1f}" for s in STAGES), flush=True
    )
    return {"wall": wall, "stages": stages, "hashes": hashes, "code": code}


def dask_roundtrip(address: str, n: int = 200) -> float:
    """Median seconds of a bare ``client.submit(noop).result()`` round trip."""
    from distributed import Client

    with Client(address) as c:
        c.submit(int, 0, pure=False).result()
        times = []
        for i in range(n):
            t = time.perf_counter()
            c.submit(int, i, pure=False).result()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factor", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker processes to try")
    ap.add_argument("--with-local", action="store_true", help="also `--dask local` (prefect-dask sizes the cluster)")
    ap.add_argument("--quick", action="store_true", help="smoke size: --factor 0.05, 4 of the 32 files")
    ap.add_argument("--workdir", help="default /tmp/bench-dask[-quick]")
    args = ap.parse_args()
    if args.quick:
        args.factor = 0.05
    try:
        import distributed
        import prefect_dask  # noqa: F401
    except ImportError:
        sys.exit("needs prefect-dask and distributed: pip install -e '.[dask]'")
    work = Path(args.workdir or ("/tmp/bench-dask-quick" if args.quick else "/tmp/bench-dask"))
    work.mkdir(parents=True, exist_ok=True)
    src = Path(f"/tmp/bench-data/x{args.factor:g}")
    n_docs, n_bytes = common.write_corpus(src, args.factor)
    cfg = work / "bench.toml"
    pattern = "*-[ef][nr].jsonl" if args.quick else "*.jsonl"  # quick: the en and fr files only (fewer tasks)
    cfg.write_text(f'[[ingest.sources]]\npath = "{src}/{pattern}"\nformat = "jsonl"\n')
    home = work / "prefect"
    home.mkdir(exist_ok=True)
    # the cluster's worker processes inherit this environment: the same Prefect home and settings as the CLI
    os.environ.update(XLMFLOW_PREFECT_HOME=str(home), PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")  # a busy machine starts it slowly
    os.environ.pop("PREFECT_API_URL", None)
    env = dict(os.environ)
    cmd = [*common.xlmflow_cmd(), "run", "--config", str(cfg), *[x for s in STAGES for x in ("--only", s)]]
    print(
        f"documents: {n_docs:,} ({n_bytes / 1e6:.0f} MB JSONL, {len(list(src.glob(pattern)))} files of them); "
        f"{os.cpu_count()} CPUs; threads runner: {common.workers()} threads",
        flush=True,
    )
    common.prefect_startup(env)  # creates the Prefect database of this home: not counted
    startup = common.prefect_startup(env)
    print(f"Prefect start-up (import + empty flow, its own process): {startup:.1f} s", flush=True)

    runs: dict[str, dict] = {"threads": one_run("threads", cmd, work / "threads", env)}
    extra: dict[str, dict] = {}
    for n in args.workers:
        t = time.perf_counter()
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        up = time.perf_counter() - t
        try:
            rt = dask_roundtrip(cluster.scheduler_address)
            name = f"dask {n} worker{'s' if n > 1 else ''}"
            runs[name] = one_run(name, [*cmd, "--dask", cluster.scheduler_address], work / f"dask{n}", env)
            extra[name] = {"cluster_start": up, "roundtrip": rt}
        finally:
            cluster.close()
    if args.with_local:
        runs["--dask local"] = one_run("--dask local", [*cmd, "--dask", "local"], work / "dask-local", env)

    base = runs["threads"]
    print(f"\n{'mode':22s} {'wall s':>7s} {'x threads':>9s} | " + " | ".join(f"{s:>15s}" for s in STAGES))
    print(f"{'':22s} {'':7s} {'':9s} | " + " | ".join(f"{'s':>7s} {'x thr':>7s}" for _ in STAGES))
    for name, r in runs.items():
        cells = [
            f"{r['stages'][s]['subflow']:7.1f} {base['stages'][s]['subflow'] / r['stages'][s]['subflow']:7.2f}"
            for s in STAGES
        ]
        print(f"{name:22s} {r['wall']:7.1f} {base['wall'] / r['wall']:9.2f} | " + " | ".join(cells))
    print("\nper stage (threads run): task runs, mean task length, bodies' busy wall")
    for s in STAGES:
        st = base["stages"][s]
        print(f"  {s:7s} {st['tasks']:4d} tasks, mean {st['mean_task'] * 1000:7.0f} ms, bodies {st['bodies']:.1f} s")
    for name, e in extra.items():
        r = runs[name]
        over = [
            (r["stages"][s]["subflow"] - r["stages"][s]["bodies"]) / max(r["stages"][s]["tasks"], 1) for s in STAGES
        ]
        print(
            f"{name}: cluster start {e['cluster_start']:.1f} s (apart), bare Dask round trip "
            f"{e['roundtrip'] * 1000:.1f} ms; subflow time outside task bodies per task: "
            + ", ".join(f"{s} {o * 1000:.0f} ms" for s, o in zip(STAGES, over))
        )
    same = {name: r["hashes"] == base["hashes"] for name, r in runs.items()}
    for name, ok in same.items():
        if name == "threads":
            continue
        diff = [k for k in base["hashes"] if runs[name]["hashes"].get(k) != base["hashes"][k]]
        changed = [s for s in STAGES if runs[name]["code"][s] != base["code"][s]]
        print(
            f"same bytes as threads, {name}: {'yes' if ok else 'NO'} ({len(base['hashes']) - len(diff)} of "
            f"{len(base['hashes'])} files identical" + (f"; differ: {diff[:5]}" if diff else "") + ")"
        )
        if diff and changed:
            # shards.json records every shard's fingerprint, which covers the code: edits between the runs show there
            print(f"  note: the code changed between the two runs (code_version differs for {', '.join(changed)})")
    (work / "dask.json").write_text(
        json.dumps(
            {
                "startup": startup,
                "extra": extra,
                "same_bytes": same,
                "runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("hashes", "code")} for k, v in runs.items()},
            },
            indent=1,
        )
    )
    print(f"results: {work / 'dask.json'}")


if __name__ == "__main__":
    main()
