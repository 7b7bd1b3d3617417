"""SIGKILL `xlmflow train` mid-training, start it again, and compare with a run never killed.

    python bench/kill_train.py --run-dir runs/demo [--kill-at-checkpoint 100] [-- extra xlmflow train flags]

RUN_DIR must hold committed vocab and shard stages (command A makes them). The script copies
them into two fresh run directories under a temporary folder: in one, `xlmflow train` runs to the
end; in the other it is killed (the whole process group: CLI, Prefect server, training process)
as soon as the checkpoint of step ``--kill-at-checkpoint`` is on disk, then started again. It
prints the resume line of the second start's log and whether the committed model
(``model.safetensors``) and ``metrics.jsonl`` are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

XLMFLOW = [sys.executable, "-m", "xlmflow.flows.cli"]


def copy_inputs(src: Path, dst: Path) -> None:
    for stage in ("vocab", "shard"):
        shutil.copytree(src / stage, dst / stage)


def train(run_dir: Path, extra: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*XLMFLOW, "train", "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--kill-at-checkpoint", type=int, default=100)
    ap.add_argument("extra", nargs="*", help="flags passed to xlmflow train (after --)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xlmflow-kill-train-"))
    clean, killed = tmp / "clean", tmp / "killed"
    for d in (clean, killed):
        copy_inputs(args.run_dir.resolve(), d)

    t = time.perf_counter()
    out = train(clean, args.extra).communicate()[0]
    print(f"uninterrupted run: {time.perf_counter() - t:.0f} s")

    p = train(killed, args.extra, start_new_session=True)
    name = f"step-{args.kill_at_checkpoint:07d}"
    while p.poll() is None and not list((killed / ".checkpoints" / "train").glob(f"*/{name}")):
        time.sleep(0.05)
    if p.poll() is not None:
        print(f"training ended before checkpoint {name}; use a smaller --kill-at-checkpoint", file=sys.stderr)
        return 1
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    print(f"killed the process group as {name} appeared")
    out = train(killed, args.extra).communicate()[0]
    resumed = [line for line in out.splitlines() if "resumed from checkpoint" in line]
    print("second start:", resumed[0].split(" - ", 1)[-1] if resumed else "NO RESUME LINE")
    same = {n: sha(clean / "train" / n) == sha(killed / "train" / n) for n in ("model.safetensors", "metrics.jsonl")}
    for n, ok in same.items():
        print(f"{n}: {'byte-identical' if ok else 'DIFFERENT'} (sha256 {sha(killed / 'train' / n)[:16]})")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if resumed and all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
