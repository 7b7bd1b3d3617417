"""Where things live: the run directory and its stage folders, on any fsspec file system.

A run directory holds one folder per stage. A stage that works in units (one per
input file or shard) commits each unit into ``<stage>/parts/<unit>/`` and then the
stage itself, whose ``_manifest.json`` lists every file. No other module builds a
path by hand: they ask a :class:`Location` for one.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import cached_property

import fsspec
from fsspec.core import url_to_fs

STAGES = ("ingest", "langid", "vocab", "shards", "model", "eval")
PARTS = "parts"


@dataclass(frozen=True)
class Location:
    """A folder (or file) named by a local path or an fsspec URL such as ``memory://x``."""

    uri: str

    @classmethod
    def of(cls, uri_or_path: str) -> "Location":
        fs, path = url_to_fs(str(uri_or_path))
        if _is_local(fs):
            return cls(fs._strip_protocol(path) if path.startswith("/") else _abspath(path))
        return cls(_unstrip(fs, path))

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        return url_to_fs(self.uri)[0]

    @cached_property
    def path(self) -> str:
        """The path as the file system's own methods take it."""
        return url_to_fs(self.uri)[1]

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "Location":
        return Location(posixpath.dirname(self.uri.rstrip("/")))

    def child(self, *names: str) -> "Location":
        for n in names:
            if not n or n.startswith("/") or ".." in n.split("/"):
                raise ValueError(f"not a relative child name: {n!r}")
        return Location(posixpath.join(self.uri, *names))

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def makedirs(self) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def open(self, mode: str = "rb", **kw):
        return self.fs.open(self.path, mode, **kw)

    def __str__(self) -> str:
        return self.uri


def _is_local(fs) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protos or "local" in protos


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(path)


def _unstrip(fs, path: str) -> str:
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return f"{proto}://{path.lstrip('/')}" if proto == "memory" else fs.unstrip_protocol(path)


@dataclass(frozen=True)
class RunDir:
    """One pipeline run: ``<root>/<stage>/``, each stage's units under ``parts/``."""

    root: Location

    @classmethod
    def of(cls, uri_or_path: str) -> "RunDir":
        return cls(Location.of(uri_or_path))

    def stage(self, name: str) -> Location:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        return self.root.child(name)

    def unit(self, stage: str, unit: str, group: str = PARTS) -> Location:
        """``<stage>/<group>/<unit>/``: one unit's committed output (a stage may have several groups)."""
        return self.stage(stage).child(group, unit)

    def unit_names(self, stage: str, group: str = PARTS) -> list[str]:
        parts = self.stage(stage).child(group)
        if not parts.exists():
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in parts.fs.ls(parts.path, detail=False))
