"""The run directory's record of its configuration: ``<run>/xlmflow.toml``.

Every command on a run directory starts from this record, so a stage run alone (``xlmflow langid --run-dir
u``) takes the settings the run was made with, never the demo's. It is the resolved configuration (file and
flags merged), written whole and atomically: aside, then renamed (a single PUT on an object store), so a
killed run leaves the old record or the new one, never half of one. It is TOML so a user can read it, and
can pass it as ``--config`` to start another run the same way.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

import tomli_w

from .layout import RunDir

RECORD = "xlmflow.toml"
HEADER = b"# The configuration this run directory was run with (xlmflow writes it; `xlmflow config show` prints it).\n"


def read_record(run: RunDir) -> dict[str, Any] | None:
    """The recorded configuration as a plain dict, or None when the run directory has none."""
    loc = run.root.child(RECORD)
    try:
        with loc.open("rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{loc}: the run's recorded configuration is not valid TOML ({e}); fix or remove it") from e


def record_text(data: dict[str, Any]) -> str:
    """The record's text: TOML of ``data`` (None values left out: TOML has no null)."""
    return (HEADER + tomli_w.dumps(_without_none(data)).encode()).decode()


def write_record(run: RunDir, data: dict[str, Any]) -> bool:
    """Record ``data`` (atomically); False when the record already says exactly that."""
    body = record_text(data).encode()
    loc = run.root.child(RECORD)
    fs = loc.fs
    if fs.exists(loc.path):
        with loc.open("rb") as f:
            if f.read() == body:
                return False
    run.root.makedirs()
    if not run.root.is_local:
        fs.pipe_file(loc.path, body)  # one PUT: whole or absent
        return True
    aside = run.root.child(f".{RECORD}.{os.getpid()}")
    with aside.open("wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside.path, loc.path)
    return True


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value
