"""Every benchmark in bench/, one after another, each in its own process; a summary of their headline lines at the end.

    python bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...] [--datatrove-python PY] [--log-dir DIR]

Order: ``noop_rerun`` first (it builds the demo run directory, ``--run-dir``, that ``check_roundtrip``,
``bench_train`` and ``kill_train`` read), then an ingest of the demo corpus (``bench_langid``, ``bench_shard`` and
``bench_vocab_memory`` read it), then the others. ``--quick`` is the smoke size for CI (a few minutes on 2 cores):
every benchmark at its small size (data stages only on a tenth of the demo for the run directory, 0.05x corpora,
fewer repeats and steps), and ``kill_train`` and ``kill_pipeline`` (whole training or pipeline runs) skipped, said
so in the summary. Each benchmark's full output goes to ``--log-dir/NAME.log``; ``bench/RESULTS.md`` holds the
figures of a full run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as common  # noqa: E402

#: lines of a benchmark's output that carry its figures (shown in the summary)
HEADLINE = (
    "ratio",
    "goal",
    "x bare",
    "stage /",
    "same bytes",
    "no-op rerun:",
    "peak",
    "round trip",
    "resumed",
    "identical",
    "ours /",
    "docs/s",
    "tokens/s",
    "MISSED",
    "met",
    "skipped",
    "not run",
    "speed",
)


def plan(quick: bool, run_dir: str, ingest_run: str, dt_python: str) -> list[tuple[str, list[str]]]:
    q = ["--quick"] if quick else []
    return [
        ("noop_rerun", ["noop_rerun.py", "--run-dir", run_dir, *q]),
        (
            "bench_datatrove",
            ["bench_datatrove.py", "--datatrove-python", dt_python, *q, *([] if quick else ["--stock-k"])],
        ),
        ("bench_scale", ["bench_scale.py", *q]),
        ("bench_dask", ["bench_dask.py", *q]),
        ("bench_ingest_memory", ["bench_ingest_memory.py", "--copies", "2" if quick else "8"]),
        (
            "bench_langid",
            ["bench_langid.py", "--ingest-run", ingest_run, *(["--repeat", "1"] if quick else [])],
        ),
        (
            "bench_vocab_memory",
            ["bench_vocab_memory.py", "--ingest", ingest_run, *(["--vocab-size", "2000"] if quick else [])],
        ),
        (
            "bench_shard",
            [
                "bench_shard.py",
                "--ingest-run",
                ingest_run,
                "--datatrove-python",
                dt_python,
                *(["--limit", "5000", "--repeat", "1", "--vocab-size", "2000"] if quick else []),
            ],
        ),
        ("bench_dedup_memory", ["bench_dedup_memory.py", *q]),
        ("check_roundtrip", ["check_roundtrip.py", "--run-dir", run_dir]),
        ("bench_train", ["bench_train.py", "--run-dir", run_dir, *q]),
        ("kill_train", [] if quick else ["kill_train.py", "--run-dir", run_dir, "--kill-at-checkpoint", "200"]),
        ("kill_pipeline", [] if quick else ["kill_pipeline.py", "--kills", "20"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke sizes (CI): a few minutes")
    ap.add_argument("--only", nargs="+", default=[], help="run only these benchmarks (names without .py)")
    ap.add_argument("--skip", nargs="+", default=[], help="skip these benchmarks")
    ap.add_argument("--run-dir", help="demo run directory (default /tmp/bench-runall/run[-quick])")
    ap.add_argument("--datatrove-python", default="/tmp/venv-dt/bin/python")
    ap.add_argument("--log-dir", default="/tmp/bench-runall/logs")
    args = ap.parse_args()
    base = Path("/tmp/bench-runall")
    run_dir = args.run_dir or str(base / ("run-quick" if args.quick else "run"))
    ingest_run = str(base / ("ingest-quick" if args.quick else "ingest"))
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"))
    summary = []
    t_all = time.perf_counter()
    for name, argv in plan(args.quick, run_dir, ingest_run, args.datatrove_python):
        if (args.only and name not in args.only) or name in args.skip:
            continue
        if not argv:
            why = "two training runs" if name == "kill_train" else "a clean demo run and 20 killed ones"
            summary.append((name, "skipped", 0.0, [f"skipped in --quick ({why}); run it without --quick"]))
            continue
        if name == "bench_langid" and not Path(ingest_run, "ingest", "_manifest.json").exists():
            # the demo corpus ingested once (plain functions), read by bench_langid / bench_vocab_memory / bench_shard
            src = Path("/tmp/bench-data/x0.05" if args.quick else "/tmp/bench-data/x1")
            common.write_corpus(src, 0.05 if args.quick else 1)
            common.run_ingest(ingest_run, f"{src}/*.jsonl")
        print(f"== {name}: python bench/{' '.join(argv)}", flush=True)
        t = time.perf_counter()
        with open(logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / argv[0]), *argv[1:]],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=HERE.parent,
            )
            lines = []
            for line in proc.stdout:
                log.write(line)
                lines.append(line.rstrip())
                print(f"   {line.rstrip()}", flush=True)
            rc = proc.wait()
        seconds = time.perf_counter() - t
        heads = [x for x in lines if any(h in x for h in HEADLINE)][-8:] or lines[-4:]
        summary.append((name, "ok" if rc == 0 else f"FAILED (exit {rc})", seconds, heads if rc == 0 else lines[-6:]))
    print(f"\n==== summary ({'quick' if args.quick else 'full'}; {time.perf_counter() - t_all:.0f} s; logs in {logs})")
    for name, status, seconds, heads in summary:
        print(f"{name:20s} {status:10s} {seconds:6.0f} s")
        for h in heads:
            print(f"    {h.strip()[:160]}")
    sys.exit(1 if any(s.startswith("FAILED") for _, s, _, _ in summary) else 0)


if __name__ == "__main__":
    main()
