"""One Prefect API server per test process (per xdist worker), started once and shared by every test.

Before this, the session's flow tests shared a ``prefect_test_harness`` while every ``xlmflow`` command a test
started as a subprocess (the kill rounds, the lock, Dask and CLI tests) started a temporary server of its own:
seconds of start-up (database migrations included) per command. Now ``PREFECT_API_URL`` names this server in
the environment, so the tests' own flows and every command they start use it, as a user's do under
``prefect server start``. The temporary-server route stays tested where it is the point (tests/test_canary.py
runs the pipeline with ``PREFECT_API_URL`` unset and its own ``PREFECT_HOME``).

The server is started in the background when pytest configures (it comes up while the tests are collected),
as the ephemeral one is: ``uvicorn`` on ``prefect.server.api.server:create_app`` with the UI off, its SQLite
database in this process's ``PREFECT_HOME``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class PrefectServer:
    def __init__(self, home: str):
        self.home = Path(home)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = self.home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> str:
        """Start the server (not waiting for it) and return its API URL."""
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {
            "PREFECT_HOME": str(self.home),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        }
        import importlib.util

        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent  # without importing prefect
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory"]
        cmd += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--log-level", "error", "--lifespan", "on"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.api_url

    def wait(self, timeout: float = 240) -> None:
        """Block until the API answers its health check (at once after the first time)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"the tests' Prefect server did not start (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before the server stops (as the harness does)."""
    if "prefect" not in sys.modules:
        return
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain():
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    try:
        run_coro_as_sync(drain())
    except Exception:  # the session is over: a log line lost here is no test's business
        pass
