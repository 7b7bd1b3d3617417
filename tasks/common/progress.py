"""Progress of long work, for a person: stages starting and ending, units done of total (with rows per
second) for each step of a stage, training steps with their loss, and the events a person must see
(a resumed training, a retry, quarantined records).

The CLI installs a :class:`TerminalProgress` (``rich`` bars) at a terminal, and a :class:`PlainProgress`
(one line per event) when its output is a file, a pipe, cron or CI; elsewhere (deployments, tests, a Python
caller) no reporter is installed and every call here does nothing. Prefect's UI shows the same work as task
runs and artifacts. Nothing here shapes an output byte, so it is no part of any cache key.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version


class Reporter(Protocol):
    def stage(self, name: str, event: str, seconds: float = 0.0, rows: int | None = None) -> None: ...

    def units(self, step: str, total: int, done: int) -> None: ...

    def unit_done(self, step: str, rows: int) -> None: ...

    def training(
        self, step: int, total: int, loss: float | None, tokens_per_s: float | None = None, what: str = "train"
    ) -> None: ...

    def note(self, text: str) -> None: ...


_reporter: Reporter | None = None


def install(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def stage(name: str, event: str, seconds: float = 0.0, rows: int | None = None) -> None:
    """Stage ``name`` ``started``, ``finished`` (after ``seconds``, its manifest holding ``rows`` rows) or
    ``failed`` (after ``seconds``)."""
    if _reporter is not None:
        _reporter.stage(name, event, seconds, rows)


def note(text: str) -> None:
    """An event a person must see even without bars: a resumed training, a retry, quarantined records."""
    if _reporter is not None:
        _reporter.note(text)


def units(step: str, total: int, done: int) -> None:
    """``step`` (a task name such as ``langid-score``) has ``total`` units, ``done`` of them already current."""
    if _reporter is not None:
        _reporter.units(step, total, done)


def unit_done(step: str, rows: int) -> None:
    """One more unit of ``step`` finished, having written ``rows`` rows (documents, shards' documents...)."""
    if _reporter is not None:
        _reporter.unit_done(step, rows)


def training(step: int, total: int, loss: float | None, tokens_per_s: float | None = None, what: str = "train") -> None:
    """Step ``step`` of ``total`` of a training process (``what``: train, or a fine-tuning unit)."""
    if _reporter is not None:
        _reporter.training(step, total, loss, tokens_per_s, what)


class TerminalProgress:
    """One bar per step (units done / total, rows per second) and one for training (steps, loss), on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, tuple[int, float, list[int]]] = {}  # step -> (rich task id, start, [rows])
        self.lock = threading.Lock()

    def stage(self, name: str, event: str, seconds: float = 0.0, rows: int | None = None) -> None:
        pass  # the bars show it

    def note(self, text: str) -> None:
        self.progress.console.print(text)

    def __enter__(self) -> "TerminalProgress":
        self.progress.start()
        install(self)
        return self

    def __exit__(self, *exc) -> None:
        install(None)
        self.progress.stop()

    def units(self, step: str, total: int, done: int) -> None:
        with self.lock:
            if step in self.tasks:  # a step planned again (a second call): extend its bar
                tid, _, _ = self.tasks[step]
                self.progress.update(tid, total=self.progress.tasks[tid].total + total, advance=done)
                return
            tid = self.progress.add_task(step, total=total, completed=done, rate="current" if done == total else "")
            self.tasks[step] = (tid, time.monotonic(), [0])

    def unit_done(self, step: str, rows: int) -> None:
        with self.lock:
            if step not in self.tasks:
                return
            tid, start, total_rows = self.tasks[step]
            total_rows[0] += rows
            rate = total_rows[0] / max(time.monotonic() - start, 1e-9)
            many = (self.progress.tasks[tid].total or 0) > 1  # a rate of one unit (a commit) says nothing
            self.progress.update(tid, advance=1, rate=f"{rate:,.0f} rows/s" if rows and many else "")

    def training(
        self, step: int, total: int, loss: float | None, tokens_per_s: float | None = None, what: str = "train"
    ) -> None:
        with self.lock:
            if what not in self.tasks:
                tid = self.progress.add_task(f"{what} (steps)", total=total, rate="")
                self.tasks[what] = (tid, time.monotonic(), [0])
            tid = self.tasks[what][0]
            self.progress.update(tid, completed=step, total=total, rate="" if loss is None else f"loss {loss:.4f}")


class PlainProgress:
    """One plain line per event, for output that is not a terminal (a log file, cron, CI, ``nohup``): stage start
    and end, each step's units when planned and when all are done, training every ``every`` steps, notes.
    Lines are flushed at once, so ``tail -f`` shows where a run is."""

    def __init__(self, out: TextIO | None = None, every: int = 50) -> None:
        self.out = out or sys.stdout
        self.every = every
        self.steps: dict[str, list] = {}  # step -> [total, done, rows, start]
        self.last_train: dict[str, int] = {}  # per training process: the step of its last line
        self.lock = threading.Lock()
        self._writing = threading.Lock()  # units on threads: one whole line at a time (print writes the text
        # and its newline apart, so two threads' lines ran together)

    def __enter__(self) -> "PlainProgress":
        install(self)
        return self

    def __exit__(self, *exc) -> None:
        install(None)

    def _line(self, text: str) -> None:
        with self._writing:
            self.out.write(f"{time.strftime('%H:%M:%S')} {text}\n")
            self.out.flush()

    def stage(self, name: str, event: str, seconds: float = 0.0, rows: int | None = None) -> None:
        if event == "started":
            self._line(f"{name}: started")
        elif event == "failed":
            self._line(f"{name}: failed after {seconds:.1f} s")
        else:
            self._line(f"{name}: finished in {seconds:.1f} s" + (f", {rows:,} rows" if rows else ""))

    def units(self, step: str, total: int, done: int) -> None:
        with self.lock:
            self.steps[step] = [total, done, 0, time.monotonic()]
        self._line(f"{step}: {total} units, {done} current, {total - done} to run")

    def unit_done(self, step: str, rows: int) -> None:
        with self.lock:
            if step not in self.steps:
                return
            state = self.steps[step]
            state[1] += 1
            state[2] += rows
            if state[1] < state[0]:
                return
            total, _, rows, start = state
        rows_part = f", {rows:,} rows" if rows else ""
        self._line(f"{step}: {total} units done{rows_part} in {time.monotonic() - start:.1f} s")

    def training(
        self, step: int, total: int, loss: float | None, tokens_per_s: float | None = None, what: str = "train"
    ) -> None:
        last = self.last_train.get(what, -1)
        if loss is None or (step - last < self.every and step != total):
            return
        self.last_train[what] = step
        speed = "" if tokens_per_s is None else f", {tokens_per_s:,.0f} tokens/s"
        self._line(f"{what}: step {step}/{total}, loss {loss:.4f}{speed}")

    def note(self, text: str) -> None:
        self._line(text)
