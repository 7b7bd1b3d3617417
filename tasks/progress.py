"""Progress of long work, for a person at a terminal: units done of total (with rows per second) for each
step of a stage, and training steps with their loss.

The CLI installs a :class:`TerminalProgress` (``rich``); elsewhere (deployments, tests, a Python caller)
no reporter is installed and every call here does nothing. Prefect's UI shows the same work as task runs
and the training progress artifact; this is the terminal's view of it.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Reporter(Protocol):
    def units(self, step: str, total: int, done: int) -> None: ...

    def unit_done(self, step: str, rows: int) -> None: ...

    def training(self, step: int, total: int, loss: float | None) -> None: ...


_reporter: Reporter | None = None


def install(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def units(step: str, total: int, done: int) -> None:
    """``step`` (a task name such as ``langid-score``) has ``total`` units, ``done`` of them already current."""
    if _reporter is not None:
        _reporter.units(step, total, done)


def unit_done(step: str, rows: int) -> None:
    """One more unit of ``step`` finished, having written ``rows`` rows (documents, shards' documents...)."""
    if _reporter is not None:
        _reporter.unit_done(step, rows)


def training(step: int, total: int, loss: float | None) -> None:
    if _reporter is not None:
        _reporter.training(step, total, loss)


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

    def training(self, step: int, total: int, loss: float | None) -> None:
        with self.lock:
            if "train" not in self.tasks:
                tid = self.progress.add_task("train (steps)", total=total, rate="")
                self.tasks["train"] = (tid, time.monotonic(), [0])
            tid = self.tasks["train"][0]
            self.progress.update(tid, completed=step, total=total, rate="" if loss is None else f"loss {loss:.4f}")
