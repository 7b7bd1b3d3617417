"""Kill ``xlmflow run`` at random moments, start it again each time, and compare with a run never killed.

A clean run is timed first, stage by stage. Then, on a second run directory, each round picks the next
stage in turn (ingest, langid, ..., evaluate, ingest, ...), removes that stage's manifests and the later
ones' (``invalidate``: committed units stay, so the stage has work left but not all of it), starts
``xlmflow run``, waits until that stage is running, sleeps a random share of the stage's clean time and
SIGKILLs the whole process group (the CLI, its temporary Prefect server, training processes), as a crash
or an OOM kill would. The stage in progress at each kill is recorded. After
``--kills`` kills, a last run finishes, and every file of every stage is compared by sha256 with the clean
run's (training on CPU is deterministic, so the resumed model's weights are byte-identical too).

    .venv/bin/python bench/kill_pipeline.py [--kills 20] [--config FILE] [--work DIR] [--seed 0]

Without ``--config`` it runs the demo (command A's pipeline: minutes per run). The test suite runs the
same function on a reduced corpus and model (tests/test_kill.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

STAGES = ("ingest", "langid", "vocab", "shard", "train", "evaluate")


def start(run_dir: str, config: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xlmflow.flows.cli", "run", "--quiet", "--run-dir", run_dir]
    cmd += ["--config", config] if config else []
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stage_in_progress(run_dir: str) -> str:
    """The first stage without a stage manifest: the one a kill interrupted."""
    for s in STAGES:
        if not Path(run_dir, s, "_manifest.json").exists():
            return s
    return "done"


def files_of(run_dir: str) -> dict[str, str]:
    """sha256 of every file of every stage (hidden bookkeeping such as stat memos left out)."""
    found = {}
    for s in STAGES:
        for p in sorted(Path(run_dir, s).rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts):
                found[str(p.relative_to(run_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def kill_and_compare(work: str, config: str | None, kills: int, seed: int = 0, log=print) -> dict:
    rng = random.Random(seed)
    clean, killed = str(Path(work, "clean")), str(Path(work, "killed"))
    took = timed_run(clean, config)
    log(f"clean run: {', '.join(f'{s} {t:.0f} s' for s, t in took.items())}")
    per_stage: Counter = Counter()
    rounds = 0
    while sum(per_stage.values()) < kills:
        rounds += 1
        target = STAGES[(rounds - 1) % len(STAGES)]  # every stage in turn, at a random moment inside it
        _force_from(killed, target)  # its output (and what follows) is not committed: it has work to be killed in
        p = start(killed, config)
        while stage_in_progress(killed) != target or not _holds_lock(killed, p.pid):
            if p.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0, took[target]))
        if p.poll() is not None:
            log(f"round {rounds}: the run ended before its kill")
            continue
        where = stage_in_progress(killed)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        per_stage[where] += 1
        log(f"kill {sum(per_stage.values())}: during {where}")
    p = start(killed, config)
    out = p.communicate()[0]
    if p.returncode:
        raise RuntimeError(f"the run after the kills failed:\n{out[-3000:]}")
    a, b = files_of(clean), files_of(killed)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    result = {
        "kills": sum(per_stage.values()),
        "kills_per_stage": dict(per_stage),
        "runs": rounds + 1,
        "files_compared": len(a),
        "identical": not differ,
        "differ": differ[:20],
        "clean_stage_s": {k: round(v, 1) for k, v in took.items()},
    }
    log(json.dumps(result))
    return result


def _holds_lock(run_dir: str, pid: int) -> bool:
    try:
        return json.loads(Path(run_dir, ".lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def timed_run(run_dir: str, config: str | None) -> dict[str, float]:
    """Run the pipeline once, never killed; how long each stage took (from the flow's start, or the previous
    stage's manifest, to its own manifest)."""
    p = start(run_dir, config)
    begin, ends = None, {}
    while p.poll() is None:
        begin = begin or (time.time() if _holds_lock(run_dir, p.pid) else None)
        for s in STAGES:
            if s not in ends and Path(run_dir, s, "_manifest.json").exists():
                ends[s] = time.time()
        time.sleep(0.05)
    out = p.communicate()[0]
    if p.returncode or len(ends) < len(STAGES):
        raise RuntimeError(f"the clean run failed:\n{out[-3000:]}")
    starts = [begin or ends[STAGES[0]], *(ends[s] for s in STAGES[:-1])]
    return {s: max(ends[s] - b, 0.5) for s, b in zip(STAGES, starts)}


def _force_from(run_dir: str, stage: str) -> None:
    """Remove the stage manifests from ``stage`` on (units stay), so the next run has work there."""
    if not Path(run_dir).exists():
        return
    from xlmflow.storage import RunDir, invalidate

    for s in STAGES[STAGES.index(stage) :]:
        invalidate(RunDir.of(run_dir).stage(s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--config", help="a TOML config (default: the demo)")
    ap.add_argument("--work", default="/tmp/xlmflow-kill")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if Path(a.work).exists():
        raise SystemExit(f"{a.work} exists; remove it or pass another --work")
    r = kill_and_compare(a.work, a.config, a.kills, a.seed)
    sys.exit(0 if r["identical"] else 1)


if __name__ == "__main__":
    main()
