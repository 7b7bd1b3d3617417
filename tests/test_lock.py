"""One run at a time per run directory: the lock file, its stale rule, and what a second `xlmflow` run sees."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlmflow.storage import Location
from xlmflow.storage import lock as lockmod
from xlmflow.storage.lock import LOCK, RunDirLocked, holder, run_lock

HOLD = """
import sys, time
from xlmflow.storage import Location
from xlmflow.storage.lock import run_lock
with run_lock(Location.of(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(run_dir: str, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, run_dir, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_is_refused_naming_the_first_reentrant_in_process(tmp_path):
    root = Location.of(str(tmp_path / "run"))
    p = _holder(root.uri, 30)
    try:
        with pytest.raises(RunDirLocked, match=rf"in use by pid {p.pid} on {socket.gethostname()}.*--wait"):
            with run_lock(root):
                pass
    finally:
        p.kill()
        p.wait()
    with run_lock(root):  # the killed holder's lock is stale: its process is gone
        with run_lock(root):  # re-entrant: the pipeline and its stage flows
            assert holder(root)["pid"] == os.getpid()
        assert holder(root)["pid"] == os.getpid()
    assert holder(root) is None and not Path(root.path, LOCK).exists()


def test_stale_rule_for_a_holder_on_another_host(tmp_path, monkeypatch):
    root = Location.of(str(tmp_path / "run"))
    root.makedirs()
    lock = Path(root.path, LOCK)
    lock.write_text(json.dumps({"pid": 1, "host": "other-node", "command": "xlmflow run", "started": "x"}))
    with pytest.raises(RunDirLocked, match="pid 1 on other-node"):  # fresh heartbeat: a live run elsewhere
        with run_lock(root):
            pass
    old = time.time() - lockmod.STALE_S - 5
    os.utime(lock, (old, old))
    with run_lock(root):  # no heartbeat for longer than STALE_S: taken over
        assert holder(root)["host"] == socket.gethostname()


def test_holder_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lockmod, "BEAT_S", 0.2)
    root = Location.of(str(tmp_path / "run"))
    with run_lock(root):
        lock = Path(root.path, LOCK)
        old = time.time() - 1000
        os.utime(lock, (old, old))
        time.sleep(0.8)
        assert holder(root)["age_s"] < 5


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "xlmflow.flows.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_second_run_gets_a_clear_error_or_waits(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\nbonjour le monde\n", encoding="utf-8")
    run_dir = str(tmp_path / "run")
    p = _holder(run_dir, 60)
    try:
        r = _cli("ingest", "--run-dir", run_dir, "--source", str(corpus), "--format", "text")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"xlmflow ingest: error: {run_dir} is in use by pid {p.pid}" in r.stderr
        assert not Path(run_dir, "ingest").exists(), "the refused run wrote nothing"
    finally:
        p.kill()
        p.wait()
    p = _holder(run_dir, 6)
    t = time.time()
    r = _cli("ingest", "--wait", "--quiet", "--run-dir", run_dir, "--source", str(corpus), "--format", "text")
    assert r.returncode == 0, r.stderr
    assert p.poll() is not None, "--wait ran only after the holder let go"
    assert time.time() - t >= 3 and Path(run_dir, "ingest", "_manifest.json").exists()
    p.wait()
