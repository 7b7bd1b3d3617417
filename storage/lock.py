"""One run at a time per run directory.

Two runs on one run directory would trample each other: a commit clears the folders it
writes aside, and both would write the same units. So a run holds its run directory's lock
for as long as it runs; a second run gets :class:`RunDirLocked` naming the holder, or waits
for it (``wait=True``, ``xlmflow run --wait``). The lock is re-entrant within a process: the
pipeline flow holds it and each stage flow it runs takes it again.

**Local run directory**: an OS lock (:mod:`filelock`, ``flock``) on ``<run dir>/.lock.flock``.
The OS drops it when its process dies, however it dies (SIGKILL, OOM killer), so there is no
stale rule to get wrong: a pid check is fooled by a reused pid, and two waiters that each
delete a "stale" file can delete each other's fresh one. ``<run dir>/.lock`` only names the
holder (pid, host, command, start) for the error message and :func:`holder`; one left by a
killed run means nothing. ``.lock.flock`` is never deleted: a waiter could be blocked on the
deleted file while a newcomer locks a new one.

**Remote run directory** (any other fsspec store: nothing there is released when a process
dies): ``<run dir>/.lock`` is a lease, JSON naming the holder plus a random token, a beat
counter and the writer's clock, rewritten by a heartbeat thread every :data:`BEAT_S` seconds
(a real write: ``touch`` of an existing file is not implemented by fsspec's base class or
object stores). A waiter judges staleness by its *own* clock, so other hosts' clocks never
matter: the lease is stale once its bytes have not changed for :data:`STALE_S` seconds since
this waiter first read them. Shortcut, so that a run without ``--wait`` need not watch a lease
dead for hours for a whole stale period: a lease whose written time is over :data:`STALE_S` old
by this host's clock is stale once unchanged for three beats (a live holder whose clock lags
would have rewritten it meanwhile). A stale lease is taken over only by the waiter that
exclusively creates ``.lock.take-<hash of the stale lease>``: of racing waiters exactly one
does; it re-reads the lease and overwrites it only if it is still those same stale bytes
(never deletes it, which would let a third waiter in), then removes the marker. The others
see the new lease beat and keep waiting. A lease is never deleted except by its own holder
(a waiter that dies in the milliseconds between marker and overwrite leaves that lease to be
deleted by hand, as the error message says).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import filelock
from fsspec.implementations.memory import MemoryFileSystem

from .layout import Location

LOCK = ".lock"  # the holder's info (local) or the lease (remote)
OS_LOCK = ".lock.flock"  # local: the file the OS lock is held on
BEAT_S = 20
STALE_S = 120  # several beats: a few missed writes (a store hiccup) are not a death

_held: dict[str, int] = {}  # lock uri -> depth, in this process
_guard = threading.Lock()
_exclusive = threading.Lock()  # fsspec's create on memory:// is check-then-write; memory:// is this process's
log = logging.getLogger("xlmflow")


class RunDirLocked(RuntimeError):
    """Another live run holds the run directory."""


@contextmanager
def run_lock(root: Location, wait: bool = False, poll_s: float = 1.0) -> Iterator[None]:
    """Hold ``root``'s lock for the block (see the module docstring)."""
    lock = root.child(LOCK)
    with _guard:
        depth = _held.get(lock.uri, 0)
        _held[lock.uri] = depth + 1
    try:
        if depth:
            yield
        else:
            release = _acquire(lock, math.inf if wait else 0.0, poll_s)
            try:
                yield
            finally:
                release()
    finally:
        with _guard:
            _held[lock.uri] -= 1
            if not _held[lock.uri]:
                del _held[lock.uri]


def holder(root: Location) -> dict | None:
    """Who holds ``root``'s lock: what its holder wrote (pid, host, command, started; for a remote
    lease also ``beat`` and ``age_s``, seconds since it was written by the writer's clock), or None.
    On a local path the file of a killed run is shown until the next run takes the lock."""
    raw = _cat(root.child(LOCK))
    if raw is None:
        return None
    info = _parse(raw)
    if "time" in info:
        info["age_s"] = time.time() - info["time"]
    return info


def _acquire(lock: Location, wait_s: float, poll_s: float) -> Callable[[], None]:
    """Take ``lock``, waiting up to ``wait_s`` seconds; returns the function that lets it go."""
    lock.parent.makedirs()
    return (_acquire_local if lock.is_local else _acquire_remote)(lock, wait_s, poll_s)


def _acquire_local(lock: Location, wait_s: float, poll_s: float) -> Callable[[], None]:
    os_lock = filelock.FileLock(lock.parent.child(OS_LOCK).path, thread_local=False)
    try:
        os_lock.acquire(timeout=-1 if wait_s == math.inf else wait_s, poll_interval=poll_s)
    except filelock.Timeout:
        for _ in range(20):  # the holder writes its info just after it locks
            info = holder(lock.parent)
            if info:
                break
            time.sleep(0.05)
        raise _refused(lock, info or {}) from None
    tmp = f"{lock.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(_me(), f)
    os.replace(tmp, lock.path)  # readers never see half a file

    def release() -> None:
        try:
            os.remove(lock.path)
        except FileNotFoundError:
            pass
        os_lock.release()

    return release


def _acquire_remote(lock: Location, wait_s: float, poll_s: float) -> Callable[[], None]:
    me = _me() | {"token": uuid.uuid4().hex}
    start = time.monotonic()
    deadline = start + wait_s
    seen, since = None, 0.0  # the lease's bytes as last read, and since when (this host's monotonic clock)
    while True:
        if _create(lock, _lease(me, 0)):
            break
        raw = _cat(lock)
        if raw is None:
            continue  # released in between
        now = time.monotonic()
        if raw != seen:
            seen, since = raw, now
        info = _parse(raw)
        why = _stale(info, now - since)
        if why and _take_over(lock, raw, _lease(me, 0)):
            log.warning("%s: took over a stale lock (%s): %s", lock.parent, why, info)
            break
        # a lease written long ago by its clock: watch whether it still beats, even without --wait
        suspect = time.time() - info.get("time", 0) > STALE_S and now - start < 4 * BEAT_S
        if now >= deadline and (why or not suspect):
            raise _refused(lock, holder(lock.parent) or info)
        time.sleep(poll_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, me, stop), daemon=True, name="xlmflow-lock")
    beat.start()

    def release() -> None:
        stop.set()
        beat.join(timeout=5)
        if _parse(_cat(lock) or b"").get("token") == me["token"]:
            _rm(lock)

    return release


def _stale(info: dict, unchanged_s: float) -> str | None:
    if unchanged_s > STALE_S:
        return f"not rewritten for {unchanged_s:.0f} s"
    age = time.time() - info.get("time", 0)
    if age > STALE_S and unchanged_s > 3 * BEAT_S:
        return f"last written {age:.0f} s ago by its clock, and not since"
    return None


def _take_over(lock: Location, stale: bytes, mine: bytes) -> bool:
    """Replace the stale lease ``stale`` with ``mine`` if this waiter wins the marker and it is still stale."""
    marker = lock.parent.child(f"{LOCK}.take-{hashlib.sha256(stale).hexdigest()[:16]}")
    if not _create(marker, mine):
        return False  # another waiter is taking it over
    try:
        if _cat(lock) != stale:
            return False  # it was rewritten, released or taken meanwhile: not stale now
        lock.fs.pipe_file(lock.path, mine)
        return True
    finally:
        _rm(marker)


def _heartbeat(lock: Location, me: dict, stop: threading.Event) -> None:
    beat = 0
    while not stop.wait(BEAT_S):
        try:
            now = _parse(_cat(lock) or b"")
            if now.get("token") != me["token"]:
                log.error("%s: this run lost its lock (paused over %s s?); now held by %s", lock.parent, STALE_S, now)
                return
            beat += 1
            lock.fs.pipe_file(lock.path, _lease(me, beat))
        except Exception:  # a missed beat; the next one retries, and a waiter allows several
            pass


def _create(loc: Location, data: bytes) -> bool:
    """Create ``loc`` holding ``data`` only if it does not exist; True when this call created it.

    Atomic where the store implements exclusive create; where fsspec falls back to check-then-write,
    the read-back narrows the race to two writes landing within one read."""
    try:
        with _exclusive if isinstance(loc.fs, MemoryFileSystem) else nullcontext():
            loc.fs.pipe_file(loc.path, data, mode="create")
    except FileExistsError:
        return False
    return _cat(loc) == data


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))[:200],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _lease(me: dict, beat: int) -> bytes:
    return json.dumps(me | {"beat": beat, "time": time.time()}).encode()


def _refused(lock: Location, info: dict) -> RunDirLocked:
    how = "wait for it to finish or run again with --wait"
    if not lock.is_local:
        how += f" (a lock not rewritten for {STALE_S} s is taken over), or, if that process is gone, delete {lock}"
    return RunDirLocked(
        f"{lock.parent} is in use by pid {info.get('pid')} on {info.get('host')} "
        f"({info.get('command', '?')}, since {info.get('started', '?')}); {how}"
    )


def _cat(loc: Location) -> bytes | None:
    try:
        return loc.fs.cat_file(loc.path)
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict:
    try:
        info = json.loads(raw)
        if isinstance(info, dict):
            return info
    except ValueError:
        pass
    return {"pid": None, "host": "?", "unreadable": True}


def _rm(loc: Location) -> None:
    try:
        loc.fs.rm(loc.path)
    except FileNotFoundError:
        pass
