"""Manifests: the record that makes a folder an output.

``_manifest.json`` is written last, after every file it lists is in place. A folder
without a valid manifest is not an output; a manifest whose files do not match
their byte counts and sha256 is an error when read as an input and a cache miss
when checked by the cache. Manifests hold no times, so a rerun that rebuilds an
output produces the same bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from .fingerprint import file_sha256
from .layout import Location

MANIFEST = "_manifest.json"


class ManifestError(RuntimeError):
    """An output folder is missing, incomplete or corrupt."""


@dataclass
class FileEntry:
    path: str  # relative to the folder holding the manifest
    bytes: int
    sha256: str
    rows: int | None = None


@dataclass
class Manifest:
    stage: str
    fingerprint: str
    code_version: str
    params: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)
    unit: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        raw = orjson.loads(data)
        raw["files"] = [FileEntry(**f) for f in raw.get("files", [])]
        return cls(**raw)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    @property
    def rows(self) -> int:
        return sum(f.rows or 0 for f in self.files)


def read_manifest(loc: Location) -> Manifest | None:
    """The folder's manifest, or None when it has none (not an output, or not yet)."""
    mpath = loc.child(MANIFEST)
    try:
        with mpath.open("rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        if not isinstance(orjson.loads(data), dict):
            raise TypeError("not a JSON object")
        return Manifest.from_json(data)
    except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError) as e:
        raise ManifestError(
            f"{mpath}: unreadable manifest ({e}); delete the folder {loc} or rerun its stage with --force to rebuild it"
        ) from e


def problems(loc: Location, manifest: Manifest, checksums: bool = True) -> list[str]:
    """What is wrong with the files a manifest lists (empty when all match)."""
    found = []
    for entry in manifest.files:
        f = loc.child(entry.path)
        try:
            size = f.fs.size(f.path)
        except FileNotFoundError:
            found.append(f"{f}: missing")
            continue
        if size != entry.bytes:
            found.append(f"{f}: {size} bytes, manifest says {entry.bytes}")
        elif checksums and file_sha256(f.fs, f.path)[0] != entry.sha256:
            found.append(f"{f}: sha256 differs from the manifest")
    return found


def load_output(loc: Location, stage: str | None = None) -> Manifest:
    """Read a committed output as an input to the next step; any defect is an error."""
    m = read_manifest(loc)
    if m is None:
        raise ManifestError(
            f"{loc} has no {MANIFEST}: it is not a committed output; run the {stage or 'upstream'} stage first"
        )
    if stage and m.stage != stage:
        raise ManifestError(f"{loc}: manifest is for stage {m.stage!r}, expected {stage!r}")
    bad = problems(loc, m)
    if bad:
        raise ManifestError(
            f"{loc}: output does not match its manifest: {'; '.join(bad)}. Rerun the {m.stage} stage to rebuild it"
        )
    return m


def committed(loc: Location, fingerprint: str) -> Manifest | None:
    """The manifest when ``loc`` holds a whole, uncorrupted output with this fingerprint, else None.

    The cache check of every run: on a local file system, files whose size and mtime match the
    folder's stat memo (written after the last full check) are not hashed again, so a no-op rerun
    does not re-read gigabytes of model weights; any change of size or mtime means a full sha256.
    Reading an output as an input (:func:`load_output`) always hashes.
    """
    try:
        m = read_manifest(loc)
    except ManifestError:
        return None
    if m is None or m.fingerprint != fingerprint:
        return None
    memo = _read_memo(loc)
    if problems(loc, m, checksums=not _memo_covers(loc, m, memo)):
        return None
    _write_memo(loc, m, memo)
    return m


STAT_MEMO = ".stat-memo.json"
MEMO_MIN_AGE_NS = 2_000_000_000  # younger files may still change within the clock's granularity


def _stat(loc: Location, path: str) -> list[int] | None:
    import os

    try:
        st = os.stat(loc.child(path).path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_memo(loc: Location) -> dict[str, list]:
    if not loc.is_local:
        return {}
    try:
        with loc.child(STAT_MEMO).open("rb") as f:
            return orjson.loads(f.read())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def _memo_covers(loc: Location, m: Manifest, memo: dict[str, list]) -> bool:
    """Every file's (size, mtime) is as when it was last hashed, and that hash is the manifest's."""
    return bool(memo) and all(memo.get(f.path) == [*(_stat(loc, f.path) or [None, None]), f.sha256] for f in m.files)


def _write_memo(loc: Location, m: Manifest, old: dict[str, list]) -> None:
    import os
    import time

    if not loc.is_local:
        return
    now, memo = time.time_ns(), {}
    for f in m.files:
        st = _stat(loc, f.path)
        if st is not None and now - st[1] > MEMO_MIN_AGE_NS:
            memo[f.path] = [*st, f.sha256]
    if memo == old:
        return
    tmp = loc.child(f"{STAT_MEMO}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(orjson.dumps(memo, option=orjson.OPT_SORT_KEYS))
        os.replace(tmp.path, loc.child(STAT_MEMO).path)
    except OSError:  # a memo is an optimisation; a read-only run directory still works
        pass


def invalidate(loc: Location) -> int:
    """Remove every manifest below ``loc`` (the stage's and its units'), so everything there is rebuilt: what
    ``xlmflow run --force STAGE`` does. The files stay until the rebuild replaces them; without a manifest
    they are not an output. Returns how many manifests were removed."""
    found = [p for p in loc.fs.find(loc.path) if p.rsplit("/", 1)[-1] == MANIFEST] if loc.exists() else []
    for p in sorted(found, key=len):  # the stage's first: from then on nothing below looks whole
        loc.fs.rm(p)
    return len(found)


def partitions(manifest: Manifest, group: str, key: str = "lang") -> dict[str, list[FileEntry]]:
    """Files of a stage under ``<group>/<key>=<value>/``, by value: e.g. clean documents per language."""
    found: dict[str, list[FileEntry]] = {}
    prefix = f"{group}/{key}="
    for f in manifest.files:
        if f.path.startswith(prefix):
            value = f.path[len(prefix) :].split("/", 1)[0]
            found.setdefault(value, []).append(f)
    return dict(sorted(found.items()))
