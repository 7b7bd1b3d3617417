"""One run at a time per run directory: the lock file, its stale rule, and what a second `xlmflow` run sees."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
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
        with pytest.raises(RunDirLocked, match=rf"in use by pid {p.pid} on {socket.gethostname()}.*--wait") as e:
            with run_lock(root):
                pass
        assert "\n" not in str(e.value)  # one line, as the CLI prints it
    finally:
        p.kill()
        p.wait()
    with run_lock(root):  # the killed holder's lock is stale: its process is gone
        with run_lock(root):  # re-entrant: the pipeline and its stage flows
            assert holder(root)["pid"] == os.getpid()
        assert holder(root)["pid"] == os.getpid()
    assert holder(root) is None and not Path(root.path, LOCK).exists()


def test_a_sigkilled_holder_is_taken_at_once(tmp_path):
    root = Location.of(str(tmp_path / "run"))
    p = _holder(root.uri, 30)
    os.kill(p.pid, signal.SIGKILL)  # not reaped: the OS lock went with the process all the same
    t = time.monotonic()
    release = lockmod._acquire(root.child(LOCK), 5.0, 0.01)
    try:
        assert time.monotonic() - t < 2 and holder(root)["pid"] == os.getpid()
    finally:
        release()
        p.wait()


def test_a_leftover_holder_file_is_not_a_lock(tmp_path):
    """The holder file only names a holder; a pid in it may be reused by an unrelated live process."""
    root = Location.of(str(tmp_path / "run"))
    root.makedirs()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for host in (socket.gethostname(), "other-node"):
            info = {"pid": other.pid, "host": host, "command": "xlmflow run", "started": "x"}
            Path(root.path, LOCK).write_text(json.dumps(info))
            with run_lock(root):
                assert holder(root)["pid"] == os.getpid()
    finally:
        other.kill()
        other.wait()


@pytest.fixture
def mem_root(monkeypatch):
    """A run directory on ``memory://`` (standing in for an object store), with a 50 ms heartbeat."""
    monkeypatch.setattr(lockmod, "BEAT_S", 0.05)
    monkeypatch.setattr(lockmod, "STALE_S", 0.5)
    root = Location.of(f"memory://xlmflow-lock-{uuid.uuid4().hex}/run")
    root.makedirs()
    yield root
    root.fs.rm(root.path, recursive=True)


def _lease(root: Location, host: str, beat: int = 0, clock_offset_s: float = 0.0) -> None:
    info = {"pid": 4242, "host": host, "command": "xlmflow run", "started": "x", "token": host}
    root.child(LOCK).fs.pipe_file(
        root.child(LOCK).path, json.dumps(info | {"beat": beat, "time": time.time() + clock_offset_s}).encode()
    )


def test_remote_heartbeat_rewrites_the_lease_so_a_live_holder_is_never_stale(mem_root):
    with run_lock(mem_root):
        first = holder(mem_root)
        time.sleep(2 * lockmod.STALE_S)
        now = holder(mem_root)
        assert now["pid"] == os.getpid() and now["age_s"] < lockmod.STALE_S, now  # fsspec has no touch: it was written
        assert now["beat"] > first["beat"] + 2
        with pytest.raises(RunDirLocked, match=rf"in use by pid {os.getpid()} on .*--wait.*delete memory://"):
            lockmod._acquire(mem_root.child(LOCK), 2 * lockmod.STALE_S, 0.01)  # another run, watching 2 stale periods
        assert holder(mem_root)["token"] == now["token"]
    assert holder(mem_root) is None


def test_remote_stale_rule_goes_by_the_waiters_clock(mem_root):
    lock = mem_root.child(LOCK)
    stop = threading.Event()

    def lagging_beater():  # a live holder on a host whose clock is 1000 s behind
        beat = 0
        while not stop.wait(lockmod.BEAT_S):
            beat += 1
            _lease(mem_root, "lagging-node", beat, -1000)

    _lease(mem_root, "lagging-node", 0, -1000)
    beater = threading.Thread(target=lagging_beater)
    beater.start()
    try:
        with pytest.raises(RunDirLocked, match="pid 4242 on lagging-node"):
            lockmod._acquire(lock, 2 * lockmod.STALE_S, 0.01)
    finally:
        stop.set()
        beater.join()
    t = time.monotonic()  # it stopped beating; its written time is old: taken after three unchanged beats
    lockmod._acquire(lock, 5.0, 0.01)()
    assert time.monotonic() - t < lockmod.STALE_S
    _lease(mem_root, "ahead-node", 0, +1000)  # a dead holder whose clock ran ahead
    with pytest.raises(RunDirLocked, match="pid 4242 on ahead-node"):
        lockmod._acquire(lock, 0.0, 0.01)
    t = time.monotonic()
    release = lockmod._acquire(lock, 5.0, 0.01)  # unchanged for a stale period by this host's clock
    assert time.monotonic() - t >= lockmod.STALE_S and holder(mem_root)["pid"] == os.getpid()
    release()
    assert holder(mem_root) is None


def test_exclusive_create_on_memory_is_atomic(mem_root):
    """fsspec's create on memory:// is exists-then-write; racing creators must still get one winner."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for i in range(100):
            loc, wins, go = mem_root.child(f"m{i}"), [], threading.Barrier(4)

            def create(k, loc=loc, wins=wins, go=go):
                go.wait()
                wins.append(lockmod._create(loc, str(k).encode()))

            threads = [threading.Thread(target=create, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum(wins) == 1, (i, wins)
    finally:
        sys.setswitchinterval(old)


def _race(lock: Location, wait_s: float) -> tuple[list, list]:
    won, lost, go = [], [], threading.Barrier(2)

    def waiter():
        go.wait()
        try:
            won.append(lockmod._acquire(lock, wait_s, 0.005))
        except RunDirLocked as e:
            lost.append(str(e))

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


def test_two_waiters_racing_for_a_stale_remote_lease_exactly_one_wins(mem_root):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two waiters as finely as the GIL allows
    try:
        for _ in range(5):
            _lease(mem_root, "dead-node", 0, -1000)
            won, lost = _race(mem_root.child(LOCK), 0.3)
            assert len(won) == 1 and len(lost) == 1, (won, lost)
            assert f"in use by pid {os.getpid()} on {socket.gethostname()}" in lost[0]
            won[0]()
            assert holder(mem_root) is None
    finally:
        sys.setswitchinterval(old)
    assert not [p for p in mem_root.fs.ls(mem_root.path, detail=False) if ".take-" in p]


def test_a_waiter_slow_to_act_on_a_stale_lease_leaves_the_one_just_taken(mem_root, monkeypatch):
    """Waiter A finds the lease stale, then stalls (GC pause, slow store) while B takes it over; A must not
    then take B's fresh lease (the old code deleted it and both ran)."""
    lock, took, won, lost, a_took = mem_root.child(LOCK), threading.Event(), [], [], []
    _lease(mem_root, "dead-node", 0, -1000)
    take_over = lockmod._take_over

    def stalling(*args):
        if threading.current_thread().name != "A":
            return take_over(*args)
        if not took.is_set():
            b = threading.Thread(target=lambda: (won.append(lockmod._acquire(lock, 2.0, 0.005)), took.set()))
            b.start()
            b.join()
        a_took.append(take_over(*args))
        return a_took[-1]

    def a():
        try:
            won.append(lockmod._acquire(lock, 0.5, 0.005))
        except RunDirLocked as e:
            lost.append(str(e))

    monkeypatch.setattr(lockmod, "_take_over", stalling)
    ta = threading.Thread(target=a, name="A")
    ta.start()
    ta.join()
    assert took.is_set() and len(won) == 1 and len(lost) == 1, (won, lost)
    assert a_took[0] is False and f"in use by pid {os.getpid()} on {socket.gethostname()}" in lost[0]
    won[0]()
    assert holder(mem_root) is None


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
