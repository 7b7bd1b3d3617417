"""Where things live: the run directory and its stage folders, on any fsspec file system.

A run directory holds one folder per stage, named as the stage. A stage that works in
units (one per input file or shard) commits each unit into ``<stage>/<group>/<unit>/``
and then the stage itself, whose ``_manifest.json`` lists every file. Partitions by a
key are folders ``<key>=<value>/`` (Hive style: ``lang=fr``). No other module builds
or parses a path by hand: they ask a :class:`Location`, :class:`RunDir` or the
functions here.
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass
from functools import cached_property

import fsspec
from fsspec.core import url_to_fs

PACKAGE = "package:"  # a path inside the installed xlmflow package: ``package:data/demo``
PARTS = "parts"
CHECKPOINTS = ".checkpoints"  # hidden: outside every stage folder, so no commit ever removes it


def resolve(path: str) -> str:
    """A user's path as a file system takes it: ``package:data/demo`` names a folder of the installed package
    (the bundled demo), wherever it is installed, so configs and deployment forms never hold one machine's
    absolute paths; any other path or URL is returned as it is."""
    path = str(path)
    if not path.startswith(PACKAGE):
        return path
    from xlmflow import PACKAGE_ROOT

    rel = path[len(PACKAGE) :].lstrip("/")
    if ".." in rel.split("/"):
        raise ValueError(f"{path!r}: a package path cannot leave the package")
    return str(PACKAGE_ROOT / rel)


def partition(key: str, value: str, *rest: str) -> str:
    """``<key>=<value>[/rest...]``: the relative path of a partition folder (or a file in it)."""
    if not value or "/" in value or "=" in value:
        raise ValueError(f"not a partition value: {value!r}")
    return posixpath.join(f"{key}={value}", *rest)


def partition_value(path: str, key: str) -> str | None:
    """The value of the first ``<key>=<value>`` folder in a relative path, or None."""
    for part in path.split("/")[:-1]:
        k, sep, v = part.partition("=")
        if sep and k == key:
            return v
    return None


def split_path(path: str, depth: int) -> list[str]:
    """A relative path as its first ``depth`` folder names and the rest: ``a/b/c.parquet``, 2 -> [a, b, c.parquet]."""
    parts = path.split("/", depth)
    if len(parts) != depth + 1:
        raise ValueError(f"{path!r} is not {depth} folders deep")
    return parts


def relative(base_uri: str, uri: str) -> str:
    """``uri`` relative to the folder ``base_uri`` (an error when it is not inside it)."""
    base = base_uri.rstrip("/") + "/"
    if not uri.startswith(base):
        raise ValueError(f"{uri} is not inside the folder {base_uri}")
    return uri[len(base) :]


@dataclass(frozen=True)
class Location:
    """A folder (or file) named by a local path or an fsspec URL such as ``memory://x``."""

    uri: str

    @classmethod
    def of(cls, uri_or_path: str) -> "Location":
        fs, path = url_to_fs(resolve(uri_or_path))
        if is_local(fs):
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

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def subfolders(self) -> list[str]:
        """Names of the folders directly inside, sorted; hidden ones (``.aside-*``) left out."""
        if not self.is_dir():
            return []
        names = [
            posixpath.basename(d["name"].rstrip("/"))
            for d in self.fs.ls(self.path, detail=True)
            if d["type"] == "directory"
        ]
        return sorted(n for n in names if not n.startswith("."))

    def makedirs(self) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def open(self, mode: str = "rb", **kw):
        return self.fs.open(self.path, mode, **kw)

    def __str__(self) -> str:
        return self.uri


def is_local(fs) -> bool:
    """Whether ``fs`` is the local file system (where os.stat, mtimes and renames apply)."""
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
        if not name.isidentifier():
            raise ValueError(f"not a stage name: {name!r}")
        return self.root.child(name)

    def checkpoints(self, stage: str, fingerprint: str) -> Location:
        """Where a long unit keeps its checkpoints: outside the stage folder (a commit never
        deletes them) and keyed by the unit's fingerprint (a changed config never resumes
        from a stale one)."""
        return self.root.child(CHECKPOINTS, stage, fingerprint[:16])

    def unit(self, stage: str, unit: str, group: str = PARTS) -> Location:
        """``<stage>/<group>/<unit>/``: one unit's committed output (a stage may have several groups)."""
        return self.stage(stage).child(group, unit)

    def unit_names(self, stage: str, group: str = PARTS) -> list[str]:
        parts = self.stage(stage).child(group)
        if not parts.exists():
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in parts.fs.ls(parts.path, detail=False))


def remove_checkpoints(folder: Location) -> None:
    """Remove a unit's checkpoint folder (:meth:`RunDir.checkpoints`) once its output is committed, then its
    stage's and the run's checkpoint folders where that left them empty."""
    if folder.exists():
        folder.fs.rm(folder.path, recursive=True)
    for parent in (folder.parent, folder.parent.parent):  # <run>/.checkpoints/<stage>, then <run>/.checkpoints
        with contextlib.suppress(OSError):
            if not parent.fs.ls(parent.path):
                parent.fs.rmdir(parent.path)
