"""`xlmflow serve`: deployments served from one process; the nightly one scheduled with a concurrency limit of 1;
a triggered stage deployment runs to Completed; SIGINT and SIGTERM stop it at once, one line and exit status 0,
with the API server up or already gone."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from xlmflow.flows.registry import STAGES


@pytest.mark.slow
def test_serve_registers_schedules_and_runs_a_deployment(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    corpus = tmp_path / "en.txt"
    corpus.write_text("Hello world\nGood morning\n", encoding="utf-8")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    run_dir = str(tmp_path / "run")
    with get_client(sync_client=True) as client:  # the prefect.yaml route (another test) uses the same names
        for d in client.read_deployments():
            client.delete_deployment(d.id)
    cmd = [
        sys.executable,
        "-m",
        "xlmflow.flows.cli",
        "serve",
        "--run-dir",
        run_dir,
        "--source",
        str(corpus),
        "--format",
        "text",
        "--cron",
        "30 3 * * *",
    ]
    proc = _start(cmd, env)
    try:
        wanted = {"nightly", *(s.name for s in STAGES)}
        deadline, made = time.time() + 120, {}
        # deployments of the same names may exist from another test (prefect.yaml): wait for this run_dir's
        while time.time() < deadline and (
            set(made) != wanted or any(d.parameters.get("run_dir") != run_dir for d in made.values())
        ):
            with get_client(sync_client=True) as client:
                made = {d.name: d for d in client.read_deployments() if d.name in wanted}
            time.sleep(0.5)
        assert set(made) == wanted and all(d.parameters["run_dir"] == run_dir for d in made.values()), sorted(made)
        nightly = made["nightly"]
        assert [s.schedule.cron for s in nightly.schedules] == ["30 3 * * *"]
        assert nightly.concurrency_limit == 1 or nightly.global_concurrency_limit.limit == 1
        assert nightly.parameters["run_dir"] == run_dir
        assert made["ingest"].parameters["params"]["sources"][0]["path"] == str(corpus)
        flow_run = run_deployment("ingest/ingest", timeout=120, poll_interval=0.5)  # default: every 5 s
        assert flow_run.state.is_completed(), flow_run.state
        assert (tmp_path / "run" / "ingest" / "_manifest.json").exists()
        _assert_stops(proc, signal.SIGINT)
    finally:
        _kill(proc)


def _start(cmd: list[str], env: dict) -> subprocess.Popen:
    """``xlmflow serve`` as ``xlmflow serve &`` in a script starts it: ignoring SIGINT."""
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )


def _assert_stops(proc: subprocess.Popen, sig: int) -> None:
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    last = out.strip().splitlines()[-1]
    said = f"xlmflow serve: stopped on {signal.Signals(sig).name}"
    assert proc.returncode == 0 and last.startswith(said), out[-3000:]
    assert took < 10, f"{took:.1f} s to stop"
    assert "Traceback" not in out, out[-3000:]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_serve_stops_on_sigterm_after_the_server_has_gone(prefect_server, tmp_path):
    proxy = Proxy(prefect_server)  # the session's server, behind a forwarder that can "go away"
    corpus = tmp_path / "en.txt"
    corpus.write_text("Hello world\n", encoding="utf-8")
    env = {**os.environ, "PREFECT_API_URL": proxy.url}
    cmd = [sys.executable, "-m", "xlmflow.flows.cli", "serve", "--run-dir", str(tmp_path / "run")]
    cmd += ["--source", str(corpus), "--format", "text", "--no-schedule"]
    proc = None
    try:
        proc = _start(cmd, env)
        watchdog = threading.Timer(180, _kill, [proc])
        watchdog.start()
        seen = []
        while not seen or not seen[-1].startswith("xlmflow serve: serving"):  # printed once all are registered
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        watchdog.cancel()
        proxy.stop()  # to serve, the API server has gone: connections drop, new ones are refused
        _assert_stops(proc, signal.SIGTERM)
    finally:
        proxy.stop()
        if proc is not None:
            _kill(proc)


class Proxy:
    """A TCP forwarder to a Prefect API server. Stopping it closes its port and every connection through it: to a
    client, the server has gone (the session's server stays up for the other tests)."""

    def __init__(self, api_url: str):
        target = urllib.parse.urlsplit(api_url)
        self.target = (target.hostname, target.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = target._replace(netloc=f"127.0.0.1:{self.listener.getsockname()[1]}").geturl()
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        for sock in [self.listener, *self.open]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
