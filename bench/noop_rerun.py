"""A no-op rerun of ``xlmflow run`` and the orchestration overhead of a whole run, with Prefect's start-up apart.

1. ``xlmflow run --run-dir RUN`` (the demo): builds whatever is missing or stale (the whole pipeline on a fresh
   RUN, ~5.5 min on 2 cores), timed. Skipped with ``--skip-build`` when RUN is known to be complete.
2. The same command again: every unit task ``Cached``, nothing written. Timed: total wall; Prefect's start-up
   (a fresh interpreter importing xlmflow and running one empty flow on the temporary server, measured apart in
   its own process); the pipeline flow's own time (its ``start_time``..``end_time`` in the Prefect database).
3. From the Prefect database of these runs (a PREFECT_HOME of this benchmark's own): per stage, the subflow's
   wall time and the wall time during which at least one of its task runs was Running (the stage bodies, the
   work itself, overlapping tasks counted once); orchestration overhead = wall - bodies.

Goal (issue 13): the no-op rerun <= 10 s beyond Prefect's start-up.

    python bench/noop_rerun.py [--run-dir /tmp/bench-noop/run] [--skip-build] [--quick] [--stages STAGE ...]

``--quick`` runs the data stages only (``--only ingest langid vocab shard``) on a tenth of the demo corpus
(a config file with that source and the plain defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TIMELINE = r"""
import json, sys
from datetime import datetime
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime, TaskRunFilter
from prefect.client.schemas.filters import TaskRunFilterFlowRunId

since = datetime.fromisoformat(sys.argv[1])
with get_client(sync_client=True) as c:
    runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)), limit=200)
    names = {f: c.read_flow(f).name for f in {r.flow_id for r in runs}}
    out = []
    for r in runs:
        tasks = []
        offset = 0
        while True:
            page = c.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[r.id])), limit=200, offset=offset
            )
            tasks += page
            offset += len(page)
            if len(page) < 200:
                break
        out.append({
            "flow": names[r.flow_id], "start": r.start_time.timestamp() if r.start_time else None,
            "end": r.end_time.timestamp() if r.end_time else None,
            "tasks": [[t.name, t.start_time.timestamp() if t.start_time else None,
                       t.end_time.timestamp() if t.end_time else None, t.state_name] for t in tasks],
        })
print(json.dumps(out))
"""


def busy(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def timeline(since: float, env: dict) -> list[dict]:
    from datetime import datetime, timezone

    iso = datetime.fromtimestamp(since, timezone.utc).isoformat()
    env = {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}  # a busy machine starts it slowly
    for attempt in range(3):
        r = subprocess.run([sys.executable, "-c", TIMELINE, iso], capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return json.loads(r.stdout.strip().splitlines()[-1])
    raise RuntimeError(f"reading the Prefect database failed:\n{r.stderr[-2000:]}")


def run_pipeline(cmd: list[str], env: dict) -> tuple[float, float, str]:
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return t0, wall, r.stdout + r.stderr


def report(title: str, t0: float, wall: float, log: str, env: dict, startup: float) -> dict:
    flows = timeline(t0, env)
    pipe = next(f for f in flows if f["flow"] == "pipeline")
    stages = [f for f in flows if f["flow"] != "pipeline" and f["start"]]
    stages.sort(key=lambda f: f["start"])
    cached = sum(t[3] == "Cached" for f in flows for t in f["tasks"])
    n_tasks = sum(len(f["tasks"]) for f in flows)
    flow_s = pipe["end"] - pipe["start"]
    print(f"\n{title}: wall {wall:.1f} s; {n_tasks} task runs ({cached} Cached), {len(stages)} stage subflows")
    print(f"  before the pipeline flow starts (imports, temporary server, config): {pipe['start'] - t0:.1f} s")
    print(
        f"  pipeline flow: {flow_s:.1f} s; after it ends (status table, server stop): {t0 + wall - pipe['end']:.1f} s"
    )
    print(f"  {'stage':9s} {'subflow s':>9s} {'bodies s':>9s} {'overhead s':>10s} {'tasks':>6s}")
    rows = {}
    for f in stages:
        sub = f["end"] - f["start"]
        body = busy([(a, b) for _, a, b, state in f["tasks"] if a and b and state != "Cached"])
        rows[f["flow"]] = {"subflow": sub, "bodies": body, "tasks": len(f["tasks"])}
        print(f"  {f['flow']:9s} {sub:9.1f} {body:9.1f} {sub - body:10.1f} {len(f['tasks']):6d}")
    bodies = sum(r["bodies"] for r in rows.values())
    print(
        f"  all stages: bodies {bodies:.1f} s of {wall:.1f} s wall -> orchestration overhead {wall - bodies:.1f} s "
        f"({(wall - bodies) / wall:.0%}); of which Prefect start-up (measured apart) ~{startup:.1f} s"
    )
    return {"wall": wall, "pipeline_flow": flow_s, "tasks": n_tasks, "cached": cached, "stages": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="/tmp/bench-noop/run")
    ap.add_argument("--skip-build", action="store_true", help="RUN is complete and current: only the no-op rerun")
    ap.add_argument("--quick", action="store_true", help="data stages on a tenth of the demo corpus")
    ap.add_argument("--stages", nargs="+", help="only these stages (xlmflow run --only ...), e.g. the data stages")
    ap.add_argument("--prefect-home", help="this benchmark's PREFECT_HOME (default: prefect/ beside the run directory)")
    args = ap.parse_args()
    args.prefect_home = args.prefect_home or str(Path(args.run_dir).parent / "prefect")
    Path(args.prefect_home).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XLMFLOW_PREFECT_HOME=args.prefect_home, PREFECT_HOME=args.prefect_home)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")  # a busy machine starts it slowly
    env.pop("PREFECT_API_URL", None)
    cmd = [*common.xlmflow_cmd(), "run", "--run-dir", args.run_dir]
    cmd += [x for s in args.stages or [] for x in ("--only", s)]
    if args.quick:
        src = Path("/tmp/bench-data/x0.1")
        common.write_corpus(src, 0.1)
        cfg = Path(args.run_dir).parent / "quick.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(f'[[ingest.sources]]\npath = "{src}/*.jsonl"\nformat = "jsonl"\n')
        cmd += ["--config", str(cfg)] + [x for s in ("ingest", "langid", "vocab", "shard") for x in ("--only", s)]
    common.prefect_startup(env)  # a fresh PREFECT_HOME's first start creates its database: not counted
    startup = min(common.prefect_startup(env) for _ in range(2))
    print(f"Prefect start-up (fresh interpreter: import xlmflow + prefect, one empty flow): {startup:.1f} s")
    results = {"prefect_startup": startup}
    if not args.skip_build:
        t0, wall, log = run_pipeline(cmd, env)
        results["first"] = report("first run (builds what is missing)", t0, wall, log, env, startup)
    t0, wall, log = run_pipeline(cmd, env)
    results["noop"] = report("no-op rerun", t0, wall, log, env, startup)
    beyond = wall - startup
    print(
        f"\nno-op rerun: {wall:.1f} s wall = {startup:.1f} s Prefect start-up + {beyond:.1f} s beyond it "
        f"({'met' if beyond <= 10 else 'MISSED'}: goal <= 10 s beyond start-up); "
        f"pipeline flow {results['noop']['pipeline_flow']:.1f} s for {results['noop']['tasks']} task runs"
    )
    out = Path(args.run_dir).parent / "noop.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
