"""Kill ``xlmflow run`` at random moments, start it again each time, and compare with a run never killed.

A clean run is timed first, stage by stage (or a caller passes one it has). Then, on a second run directory,
each round picks the next stage in turn (ingest, langid, ..., evaluate, ingest, ...; a stage that committed nothing
but its manifest in the clean run is passed over), removes that stage's
manifests and the later ones' (``invalidate``: committed units stay, so the stage has work left but not all
of it), starts ``xlmflow run``, waits until that stage is running, sleeps a random share of the stage's clean
time and SIGKILLs the whole process group (the CLI, its temporary Prefect server when ``PREFECT_API_URL`` names
none, training processes), as a crash or an OOM kill would. The stage in progress at each kill is recorded.
After ``--kills`` kills, a last run finishes, and every file of every stage is compared by sha256 with the
clean run's (training on CPU is deterministic, so the resumed model's weights are byte-identical too).

A round's run is forked from a process that imported the CLI once (:class:`ForkServer`; ``--no-fork``: each
starts as ``python -m xlmflow.flows.cli``): the kill comes inside a stage, never during imports, so the
seconds of start-up per round are spared. With ``PREFECT_API_URL`` set, every run reports to that server
(the tests start one per session) instead of starting a temporary one.

    .venv/bin/python bench/kill_pipeline.py [--kills 20] [--config FILE] [--work DIR] [--seed 0] [--no-fork]

Without ``--config`` it runs the demo (command A's pipeline: minutes per run). The test suite runs the
same function on a reduced corpus and model (tests/small_run.py, tests/test_kill.py).
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
import tempfile
import time
from collections import Counter
from pathlib import Path

STAGES = ("ingest", "langid", "vocab", "shard", "train", "finetune", "evaluate")


def start(run_dir: str, config: str | None, env: dict | None = None, out=subprocess.PIPE, flags=("--quiet",)):
    """``xlmflow run`` in a session of its own (a kill takes its whole process group)."""
    cmd = [sys.executable, "-m", "xlmflow.flows.cli", "run", *flags, "--run-dir", run_dir]
    cmd += ["--config", config] if config else []
    err = subprocess.STDOUT if out is not None else None
    return subprocess.Popen(cmd, stdout=out, stderr=err, text=True, start_new_session=True, env=env)


class ForkServer:
    """A process that imported Prefect once and forks each round's ``xlmflow run`` from it.

    The forked run is a process of its own, in a session of its own (the kill takes its process group: the run,
    its training processes), running the CLI's ``main`` as ``python -m xlmflow.flows.cli`` would, without the
    interpreter's start and Prefect's import (seconds) per round; a round's kill comes only once its stage is
    running. The server holds no thread when it forks. Linux and macOS (fork)."""

    def __init__(self, env: dict | None = None):
        env = {**(os.environ if env is None else env)}
        env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # what the CLI sets before Prefect
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the fork server did not start (exit {self.proc.wait()})")

    def run(self, argv: list[str]) -> Forked:
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        return Forked(int(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Forked:
    """A run forked by :class:`ForkServer` (which reaps it): its pid (= its process group) and ``poll``."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0
        return None

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.01)
        return 0


_FORK_SERVER = """
import json, os, signal, sys
import xlmflow  # Prefect's defaults, before Prefect
# Prefect is most of the CLI's start-up and pure Python; the stages' libraries (polars, pyarrow, numpy, torch)
# start threads of their own, which a fork would not copy: the run imports them after its fork
import prefect, prefect.flows, prefect.tasks, prefect.task_runners, prefect.client.orchestration

if os.path.isdir("/proc/self/task") and len(os.listdir("/proc/self/task")) > 1:
    sys.exit("the fork server has threads: a fork would not copy them")

def reap(*_):
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return

signal.signal(signal.SIGCHLD, reap)
print("ready", flush=True)
for line in sys.stdin:
    argv = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the run waits for its own training processes
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        code = 1
        try:
            from xlmflow.flows.cli import main

            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


def stage_in_progress(run_dir: str) -> str:
    """The first stage without a stage manifest: the one a kill interrupted."""
    for s in STAGES:
        if not Path(run_dir, s, "_manifest.json").exists():
            return s
    return "done"


def files_of(run_dir: str, extra: tuple[str, ...] = (), stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    """sha256 of every file of ``stages`` (default: every stage), and of the ``extra`` folders (hidden bookkeeping
    such as stat memos left out)."""
    found = {}
    for s in (*stages, *extra):
        for p in sorted(Path(run_dir, s).rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts):
                found[str(p.relative_to(run_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def kill_and_compare(
    work: str,
    config: str | None,
    kills: int,
    seed: int = 0,
    log=print,
    clean: tuple[str, dict[str, float]] | None = None,
    env: dict | None = None,
    fork: bool = True,
) -> dict:
    """``kills`` kills, a last run, and the comparison with a clean run: this one's own (timed first), or
    ``clean`` = (run directory of a finished run never killed, its seconds per stage) when a caller has one.
    ``fork``: the rounds' runs are forked by a :class:`ForkServer` (else each starts as ``python -m``)."""
    rng = random.Random(seed)
    killed = str(Path(work, "killed"))
    if clean is None:
        clean = str(Path(work, "clean")), timed_run(str(Path(work, "clean")), config, env=env)
    clean_dir, took = clean
    log(f"clean run: {', '.join(f'{s} {t:.1f} s' for s, t in took.items())}")
    targets = [s for s in STAGES if _has_work(clean_dir, s)]
    if skipped := [s for s in STAGES if s not in targets]:  # a round aimed there would end before its kill
        log(f"not aimed at (no unit output in the clean run): {', '.join(skipped)}")
    per_stage: Counter = Counter()
    rounds, wasted, startup = 0, 0, []
    forks = ForkServer(env) if fork else None
    argv = ["run", "--quiet", "--run-dir", killed, *(["--config", config] if config else [])]
    patience = 120 + 5 * sum(took.values())  # to reach a round's stage: a whole run at most
    try:
        while sum(per_stage.values()) < kills:
            rounds += 1
            target = targets[(rounds - 1) % len(targets)]  # every stage in turn, at a random moment inside it
            _force_from(killed, target)  # its output (and what follows) is not committed: it has work to be killed in
            t0 = time.monotonic()
            p = forks.run(argv) if forks else start(killed, config, env=env, out=subprocess.DEVNULL)
            where, pause = _kill_inside(p, killed, target, lambda s: rng.uniform(0, took[s]), patience)
            startup.append(time.monotonic() - t0 - pause)
            if where is None:
                wasted += 1
                log(f"round {rounds}: the run ended before its kill")
                continue
            per_stage[where] += 1
            n = sum(per_stage.values())
            log(f"kill {n}: during {where} ({target} reached after {startup[-1]:.1f} s, then {pause:.1f} s)")
    finally:
        if forks:
            forks.close()
    p = start(killed, config, env=env)  # the last run: a process of its own, from the interpreter's start
    out = p.communicate()[0]
    if p.returncode:
        raise RuntimeError(f"the run after the kills failed:\n{out[-3000:]}")
    a, b = files_of(clean_dir), files_of(killed)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    result = {
        "kills": sum(per_stage.values()),
        "kills_per_stage": dict(per_stage),
        "runs": rounds + 1,
        "runs_ended_before_their_kill": wasted,
        "files_compared": len(a),
        "identical": not differ,
        "differ": differ[:20],
        "clean_stage_s": {k: round(v, 1) for k, v in took.items()},
        "start_to_stage_s": round(sum(startup) / max(len(startup), 1), 1),
    }
    log(json.dumps(result))
    return result


def kill_during(
    work: str, start_from: str, clean_dir: str, marks: list[str], env=None, log=print, until: str | None = None
) -> dict:
    """Kills inside one run that carries state (an incremental day 2): a copy of ``start_from`` (day 1) is run with
    ``xlmflow run --quiet`` (its recorded configuration) and SIGKILLed the moment a path matching the next of
    ``marks`` (globs in the run directory: ``.checkpoints/train/*/step-*``) appears, run again, and so on; a last
    run finishes. Then every file of every stage and of ``versions/`` is compared with ``clean_dir``'s (the same
    day 2, never killed). No stage is invalidated between rounds: an incremental run keeps what is committed, so a
    kill lands where a real one would. The stage of each kill: the first whose manifest is not yet the clean run's.
    ``until``: every run stops after that stage (``--only``), and only the stages up to it are compared."""
    import shutil

    killed = Path(work, "killed")
    shutil.copytree(start_from, killed, symlinks=True)
    stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
    only = [flag for s in stages for flag in ("--only", s)] if until else []
    done = {s: _fingerprint(clean_dir, s) for s in stages}
    where = []
    forks = ForkServer(env)
    try:
        for mark in marks:
            p = forks.run(["run", "--quiet", "--run-dir", str(killed), *only])
            while not any(killed.glob(mark)) and p.poll() is None:
                time.sleep(0.01)
            stage = next((s for s in stages if _fingerprint(str(killed), s) != done[s]), "done")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                stage = None
            p.wait()
            where.append((mark, stage))
            log(f"kill at {mark}: during {stage}")
    finally:
        forks.close()
    p = start(str(killed), None, env=env, flags=("--quiet", *only))
    out = p.communicate()[0]
    if p.returncode:
        raise RuntimeError(f"the run after the kills failed:\n{out[-3000:]}")
    a, b = files_of(clean_dir, ("versions",), stages), files_of(str(killed), ("versions",), stages)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    result = {"kills": where, "files_compared": len(a), "identical": not differ, "differ": differ[:20]}
    log(json.dumps(result))
    return result


def _fingerprint(run_dir: str, stage: str) -> str | None:
    try:
        return json.loads(Path(run_dir, stage, "_manifest.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def _kill_inside(p, run_dir: str, target: str, draw, timeout: float) -> tuple[str | None, float]:
    """Wait until ``p`` holds the run directory and works on ``target``, sleep ``draw(target)`` seconds, SIGKILL
    its process group: (the stage in progress at the kill, or None when the run ended first; the sleep)."""
    deadline = time.monotonic() + timeout
    while stage_in_progress(run_dir) != target or not _holds_lock(run_dir, p.pid):
        if p.poll() is not None:
            break
        if time.monotonic() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
            raise RuntimeError(f"the run did not reach {target} in {timeout:.0f} s (in {stage_in_progress(run_dir)})")
        time.sleep(0.02)
    pause = draw(target)
    time.sleep(pause)
    if p.poll() is not None:
        return None, pause
    where = stage_in_progress(run_dir)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended (and was reaped) just now
        return None, pause
    p.wait()
    return where, pause


def _holds_lock(run_dir: str, pid: int) -> bool:
    try:
        return json.loads(Path(run_dir, ".lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def timed_run(run_dir: str, config: str | None, env: dict | None = None, flags=("--quiet",), out=None):
    """Run the pipeline once, never killed; how long each stage took (from the first stage's first output, or
    the previous stage's manifest, to its own manifest: not the seconds a temporary Prefect server takes to
    start before the first stage can). ``out``: a file opened ``w+`` for its output (default: a temporary
    one); the error message quotes its end."""
    sink = out if out is not None else tempfile.TemporaryFile("w+")
    p = start(run_dir, config, env=env, out=sink, flags=flags)
    begin, ends = None, {}
    while p.poll() is None:
        working = _holds_lock(run_dir, p.pid) and Path(run_dir, STAGES[0]).exists()  # a temporary server is up
        begin = begin or (time.time() if working else None)
        for s in STAGES:
            if s not in ends and Path(run_dir, s, "_manifest.json").exists():
                ends[s] = time.time()
        time.sleep(0.05)
    if p.returncode or len(ends) < len(STAGES):
        sink.seek(0)
        raise RuntimeError(f"the clean run failed:\n{sink.read()[-3000:]}")
    starts = [begin or ends[STAGES[0]], *(ends[s] for s in STAGES[:-1])]
    return {s: max(ends[s] - b, 0.5) for s, b in zip(STAGES, starts)}


def _has_work(run_dir: str, stage: str) -> bool:
    """Whether ``stage`` committed any file but its manifest (a finetune stage without parallel sets commits none)."""
    return any(p.is_file() and p.name != "_manifest.json" for p in Path(run_dir, stage).rglob("*"))


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
    ap.add_argument("--no-fork", action="store_true", help="start each round's run as a new interpreter")
    a = ap.parse_args()
    if Path(a.work).exists():
        raise SystemExit(f"{a.work} exists; remove it or pass another --work")
    r = kill_and_compare(a.work, a.config, a.kills, a.seed, fork=not a.no_fork)
    sys.exit(0 if r["identical"] else 1)


if __name__ == "__main__":
    main()
