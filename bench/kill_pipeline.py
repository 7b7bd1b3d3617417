"""Kill ``xlmflow run`` at random moments, start it again each time, and compare with a run never killed.

A clean run is timed first. Then, on a second run directory, each round starts ``xlmflow run``, waits
until the pipeline flow holds the run directory's lock (Prefect is up), sleeps a random share of the
clean run's time and SIGKILLs the whole process group (the CLI, its temporary Prefect server, training
processes), as a crash or an OOM kill would. The stage in progress at each kill is recorded. After
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
    t = time.time()
    p = start(clean, config)
    out = p.communicate()[0]
    if p.returncode:
        raise RuntimeError(f"the clean run failed:\n{out[-3000:]}")
    clean_s = time.time() - t
    log(f"clean run: {clean_s:.0f} s")
    per_stage: Counter = Counter()
    rounds, stalled, last = 0, 0, None
    while sum(per_stage.values()) < kills:
        rounds += 1
        p = start(killed, config)
        while not _holds_lock(killed, p.pid) and p.poll() is None:  # the last round's stale lock is not it
            time.sleep(0.02)
        # a random moment; longer while kills keep landing in the same stage, so a long unit finishes too
        time.sleep(rng.uniform(0, clean_s / 4) * (1 + stalled))
        if p.poll() is not None:  # finished before the kill: start the last stages again from scratch
            log(f"round {rounds}: the run finished before its kill; forcing the pipeline from a random stage")
            _force_from(killed, rng.choice(STAGES), config)
            continue
        where = stage_in_progress(killed)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        stalled, last = (stalled + 1 if where == last else 0), where
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
        "clean_run_s": round(clean_s, 1),
    }
    log(json.dumps(result))
    return result


def _holds_lock(run_dir: str, pid: int) -> bool:
    try:
        return json.loads(Path(run_dir, ".lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def _force_from(run_dir: str, stage: str, config: str | None) -> None:
    """Remove the stage manifests from ``stage`` on, so the next round has work to be killed in."""
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
