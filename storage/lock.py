"""One run at a time per run directory.

Two runs on one run directory would trample each other: a commit clears the folders it
writes aside, and both would write the same units. So a run holds ``<run dir>/.lock``, a
small JSON file naming its holder (pid, host, command, start), created atomically
(``O_EXCL`` locally, exclusive-create ``xb`` where an fsspec store supports it) and
refreshed by a heartbeat thread every :data:`BEAT_S` seconds.

A lock is **stale**, and is taken over with a warning, when its holder is on this host and
its process is gone, or, for a holder on another host (a shared file system), when its
heartbeat is older than :data:`STALE_S`. Otherwise a second run gets :class:`RunDirLocked`
naming the holder, or waits for it (``wait=True``, ``xlmflow run --wait``). The lock is
re-entrant within a process: the pipeline flow holds it and each stage flow it runs
takes it again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .layout import Location

LOCK = ".lock"
BEAT_S = 20
STALE_S = 120  # > several heartbeats, and clock skew between hosts

_held: dict[str, int] = {}  # lock uri -> depth, in this process
_guard = threading.Lock()


class RunDirLocked(RuntimeError):
    """Another live run holds the run directory."""


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))[:200],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def run_lock(root: Location, wait: bool = False, poll_s: float = 1.0) -> Iterator[None]:
    """Hold ``root``'s lock for the block (see the module docstring)."""
    lock = root.child(LOCK)
    with _guard:
        depth = _held.get(lock.uri, 0)
        _held[lock.uri] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _guard:
                _held[lock.uri] -= 1
        return
    try:
        _acquire(lock, wait, poll_s)
    except BaseException:
        with _guard:
            _held.pop(lock.uri, None)
        raise
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, stop), daemon=True, name="xlmflow-lock")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=5)
        with _guard:
            _held.pop(lock.uri, None)
        _release(lock)


def holder(root: Location) -> dict | None:
    """Who holds ``root``'s lock (with ``age_s``: seconds since its last heartbeat), or None."""
    lock = root.child(LOCK)
    try:
        with lock.open("rb") as f:
            info = json.loads(f.read() or b"{}")
        info["age_s"] = time.time() - _mtime(lock)
        return info
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {"pid": None, "host": "?", "age_s": time.time() - _mtime(lock), "unreadable": True}


def _acquire(lock: Location, wait: bool, poll_s: float) -> None:
    lock.parent.makedirs()
    me = json.dumps(_me()).encode()
    while True:
        if _create(lock, me):
            return
        info = holder(lock.parent)
        if info is None:
            continue  # released in between
        why = _stale(info)
        if why:
            logging.getLogger("xlmflow").warning("%s: taking over a stale lock (%s): %s", lock.parent, why, info)
            _remove(lock)
            continue
        if not wait:
            raise RunDirLocked(
                f"{lock.parent} is in use by pid {info.get('pid')} on {info.get('host')} "
                f"({info.get('command', '?')}, since {info.get('started', '?')}); wait for it to finish, "
                f"run again with --wait, or, if that process is gone, delete {lock}"
            )
        time.sleep(poll_s)


def _stale(info: dict) -> str | None:
    if info.get("host") == socket.gethostname() and info.get("pid"):
        if not _alive(int(info["pid"])):
            return f"process {info['pid']} is gone"
        return None
    if info["age_s"] > STALE_S:
        return f"no heartbeat for {info['age_s']:.0f} s"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) holds nothing
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _create(lock: Location, data: bytes) -> bool:
    """Create the lock file only if it does not exist; True when this call created it."""
    if lock.is_local:
        try:
            fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    try:
        with lock.fs.open(lock.path, "xb") as f:  # exclusive create where the store supports it
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):  # no exclusive create: check, then write (a small race)
        if lock.exists():
            return False
        with lock.open("wb") as f:
            f.write(data)
        return True


def _heartbeat(lock: Location, stop: threading.Event) -> None:
    while not stop.wait(BEAT_S):
        try:
            if lock.is_local:
                os.utime(lock.path)
            else:
                lock.fs.touch(lock.path, truncate=False)
        except Exception:  # a missed beat only makes the lock look older
            pass


def _mtime(lock: Location) -> float:
    if lock.is_local:
        return os.stat(lock.path).st_mtime
    m = lock.fs.modified(lock.path)
    return m.timestamp()


def _remove(lock: Location) -> None:
    try:
        lock.fs.rm(lock.path)
    except FileNotFoundError:
        pass


def _release(lock: Location) -> None:
    info = holder(lock.parent)
    if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        _remove(lock)
