"""The nightly deployment, run twice by ``xlmflow serve`` with a file added between: the second run is incremental.

Starts ``prefect server start`` (a PREFECT_HOME of its own, a free port), ``xlmflow serve --no-schedule`` on a
small corpus (tests/small_run.py: the demo's first documents of three languages, a tiny model), triggers
``pipeline/nightly`` (as the schedule would), adds a file of new French documents to the source folder, triggers
it again, and prints what each run did: its state and seconds, the ledger's increments, whether training
continued, and the stages' wall times from the flow runs' logs.

    .venv/bin/python bench/nightly_twice.py [--work /tmp/xlmflow-nightly]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import zstandard

from xlmflow import PACKAGE_ROOT

sys.path.insert(0, str(PACKAGE_ROOT / "tests"))
from small_run import small_config  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ok():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/xlmflow-nightly")
    work = Path(ap.parse_args().work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = small_config(work)
    run_dir = work / "run"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_API_URL": api}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"
    bin_ = Path(sys.executable).parent
    server = subprocess.Popen(
        [bin_ / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(work / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:
        _wait("the Prefect server", lambda: _up(api))
        cmd = [bin_ / "xlmflow", "serve", "--no-schedule", "--run-dir", str(run_dir), "--config", config]
        serve = subprocess.Popen(cmd, env=env, stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT)
        _wait("xlmflow serve", lambda: "xlmflow serve: serving" in (work / "serve.log").read_text())
        os.environ.update(env)
        from prefect.deployments import run_deployment

        for night in (1, 2):
            if night == 2:  # a new file in the source folder, as a crawler would add one
                lines = _demo_lines("debian-handbook-fr.jsonl.zst", 400, 600)
                (work / "corpus" / "more-fr.jsonl").write_text("".join(lines))
            t0 = time.monotonic()
            run = run_deployment("pipeline/nightly", timeout=1800, poll_interval=1)
            took = time.monotonic() - t0
            ledger = json.loads((run_dir / "langid" / "increments.json").read_text())
            summary = json.loads((run_dir / "train" / "summary.json").read_text())
            record = (run_dir / "xlmflow.toml").read_text()
            print(
                json.dumps(
                    {
                        "night": night,
                        "state": run.state.type.value,
                        "seconds": round(took, 1),
                        "recorded_incremental": "incremental = true" in record,
                        "increments": [(i["number"], sorted(i["inputs"])) for i in ledger["increments"]],
                        "train_continued_from": (summary.get("continued_from") or {}).get("version"),
                        "train_steps": summary["steps"],
                        "total_steps": summary.get("total_steps", summary["steps"]),
                    }
                ),
                flush=True,
            )
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=60)


def _up(api: str) -> bool:
    try:
        return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
    except OSError:
        return False


def _demo_lines(name: str, lo: int, hi: int) -> list[str]:
    with zstandard.ZstdDecompressor().stream_reader((PACKAGE_ROOT / "data" / "demo" / name).open("rb")) as r:
        return io.TextIOWrapper(r, encoding="utf-8").readlines()[lo:hi]


if __name__ == "__main__":
    main()
