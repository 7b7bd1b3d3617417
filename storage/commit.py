"""Atomic commits: write aside, rename into place, manifest last (as cc_net does).

A step writes its files into a hidden ``.aside-*`` folder next to its output.
Only when all are written are they hashed, the old manifest removed, the files
renamed into place and the new manifest written last. A process killed at any
point leaves either the old committed output, or a folder without a manifest
(not an output, rebuilt by the next run), never a partial output that looks whole.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import pyarrow.parquet as pq

from .fingerprint import file_sha256
from .layout import Location
from .manifest import MANIFEST, FileEntry, Manifest

ASIDE_PREFIX = ".aside-"


class Aside:
    """The hidden folder a step writes into; ``path(name)`` gives where a file goes."""

    def __init__(self, target: Location):
        self.target = target
        self.loc = target.child(f"{ASIDE_PREFIX}{uuid.uuid4().hex[:12]}")
        self.loc.makedirs()
        self.names: list[str] = []
        self.rows: dict[str, int] = {}

    def path(self, name: str, rows: int | None = None) -> Location:
        if name == MANIFEST or name.startswith("."):
            raise ValueError(f"reserved file name {name!r}")
        if name not in self.names:
            self.names.append(name)
        if rows is not None:
            self.rows[name] = rows
        loc = self.loc.child(name)
        if "/" in name:
            self.loc.fs.makedirs(loc.path.rsplit("/", 1)[0], exist_ok=True)
        return loc


@contextmanager
def commit(target: Location, manifest: Manifest) -> Iterator[Aside]:
    """Yield an :class:`Aside`; on a clean exit move its files into ``target`` and write the manifest.

    ``manifest.files`` is filled in here (bytes, sha256, Parquet row counts). Files in
    ``target`` that the new manifest does not list are removed, except the manifests
    of unit folders inside it (a stage lists its units' files, not their manifests).
    """
    target.makedirs()
    remove_asides(target)
    aside = Aside(target)
    fs = target.fs
    try:
        yield aside
        entries = []
        for name in sorted(aside.names):
            src = aside.loc.child(name)
            if not fs.exists(src.path):
                raise FileNotFoundError(f"{src}: registered for commit but never written")
            sha, size = file_sha256(fs, src.path)
            rows = aside.rows.get(name)
            if rows is None and name.endswith(".parquet"):
                with src.open() as f:
                    rows = pq.ParquetFile(f).metadata.num_rows
            entries.append(FileEntry(path=name, bytes=size, sha256=sha, rows=rows))
        manifest.files = entries + [e for e in manifest.files if e.path not in aside.names]
        manifest.files.sort(key=lambda e: e.path)
        mpath = target.child(MANIFEST)
        if fs.exists(mpath.path):
            fs.rm(mpath.path)  # from here until the end the folder is not an output
        keep = {e.path for e in manifest.files}
        for existing in _files_below(target):
            hidden = any(part.startswith(".") for part in existing.split("/"))  # asides, stat memos: never outputs
            if existing not in keep and not hidden and not existing.endswith("/" + MANIFEST):
                fs.rm(target.child(existing).path)
        for name in aside.names:
            dst = target.child(name)
            if "/" in name:
                fs.makedirs(dst.path.rsplit("/", 1)[0], exist_ok=True)
            fs.mv(aside.loc.child(name).path, dst.path)
        with aside.loc.child(MANIFEST).open("wb") as f:
            f.write(manifest.to_json())
        fs.mv(aside.loc.child(MANIFEST).path, mpath.path)
    finally:
        if fs.exists(aside.loc.path):
            fs.rm(aside.loc.path, recursive=True)


def _files_below(loc: Location) -> list[str]:
    base = loc.path.rstrip("/") + "/"
    return [p[len(base) :] for p in loc.fs.find(loc.path) if p.startswith(base)]


def remove_asides(target: Location) -> None:
    """Leftovers of a killed writer: never part of an output, safe to delete (the run-directory lock
    means no other run is writing)."""
    for p in target.fs.ls(target.path, detail=False):
        if p.rstrip("/").rsplit("/", 1)[-1].startswith(ASIDE_PREFIX):
            target.fs.rm(p, recursive=True)
