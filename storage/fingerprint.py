"""Content fingerprints: what cache keys and manifests are made of.

Fingerprints hash *content* (file bytes, parameters, code), never absolute paths or
times, so a moved corpus or run directory does no work again and a touched-but-unchanged
file does not rerun. The code part covers every module of ours a stage imports, not only
the task function's text (Prefect's TASK_SOURCE misses callees: PrefectHQ/prefect#16925),
and the versions of the libraries that shape output bytes.

The code part hashes what the code *does*, not how it reads: each module counts as a dump of
its syntax tree with every docstring (module, class, function) removed, so comments,
formatting and docstring edits leave every stage current, and any change to code makes the
stages that use it stale. A stage that is a package covers its ``__init__`` and every
submodule below it, imported by ``__init__`` or not.

Presentation-only modules are not part of any key: a module that only shows results
(progress display, Prefect UI reports) declares ``PRESENTATION_ONLY = True`` at its top level;
it never shapes output bytes, so it is not part of any cache key, and what it imports is
not followed from it. The declaration is read from the module's syntax tree (nothing is
imported), so it must be a plain top-level assignment of the constant ``True``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .layout import is_local

CHUNK = 4 << 20
HASH_BITS = 63  # stable_hashes fit a signed int64 and JSON without loss
OUR_PACKAGES = ("xlmflow",)


def hash_json(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (sorted keys, no spaces)."""
    data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
    return hashlib.sha256(data).hexdigest()


def sha256_stream(f) -> tuple[str, int]:
    """(sha256 hex, byte count) of an open binary file, read in 4 MiB chunks."""
    h, n = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def file_sha256(fs, path: str) -> tuple[str, int]:
    """(sha256, bytes) of a file. Local files are memoised per process by (path, size, mtime),
    so the several checks of one run (cache key, submit, commit) read each output once."""
    if is_local(fs):
        st = os.stat(path)
        # only files older than the clock's granularity can be memoised safely: a rewrite of
        # such a file gets a new mtime, so (size, mtime) cannot match a stale entry
        if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
            return _local_sha256(path, st.st_size, st.st_mtime_ns)
    with fs.open(path, "rb") as f:
        return sha256_stream(f)


@lru_cache(maxsize=65536)
def _local_sha256(path: str, size: int, mtime_ns: int) -> tuple[str, int]:
    with open(path, "rb") as f:
        return sha256_stream(f)


def tree_sha256(fs, path: str) -> str:
    """Fingerprint of every file below a folder: relative names and contents."""
    files = sorted(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith("."))
    return hash_json([[p[len(path.rstrip("/")) + 1 :], file_sha256(fs, p)[0]] for p in files])


_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, wrapping uint64 arithmetic, on a whole array."""
    h = h + _GOLDEN
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def stable_hashes(strings: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A stable 63-bit hash (int64) per string (a null hashes as ""), vectorised over Arrow buffers.

    Defined here, not by a library, so it never changes with a library version or process (unlike
    Python's or polars' ``hash``). The UTF-8 bytes are cut into zero-padded 8-byte words; word ``j`` is
    keyed by its position (``mix(word ^ mix(seed + j))``), the keyed words of a string are summed, and the
    sum is mixed with the length and seed. No step depends on the previous word, so a batch costs time
    in proportion to its bytes, whatever its longest string (a fold word by word costs batch size x
    longest string). Used wherever a document id must pick something reproducibly (a split, a sample).
    """
    return (stable_hashes64(strings, seed) >> np.uint64(64 - HASH_BITS)).astype(np.int64)


def stable_hashes64(strings: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """The full 64-bit (uint64) form of :func:`stable_hashes`; two seeds give a 128-bit key."""
    arr = pc.fill_null(strings, "")
    arr = (pa.concat_arrays(arr.chunks) if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.large_binary())
    n = len(arr)
    out = np.zeros(n, np.uint64)
    if n == 0:
        return out
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    seed64 = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    # strings in groups of ~HASH_GROUP_BYTES, so the scratch arrays (8 bytes per byte) stay small
    bounds = np.searchsorted(offsets, offsets[0] + np.arange(0, offsets[-1] - offsets[0], HASH_GROUP_BYTES), "right")
    cuts = np.unique(np.concatenate([[0], np.clip(bounds - 1, 0, n), [n]]))
    for a, b in zip(cuts[:-1], cuts[1:]):
        out[a:b] = _hash_group(data, offsets[a : b + 1], seed64)
    return out


HASH_GROUP_BYTES = 4 << 20


def _hash_group(data: np.ndarray, offsets: np.ndarray, seed: np.uint64) -> np.ndarray:
    lengths = np.diff(offsets)
    n_words = (lengths + 7) // 8
    word_start = np.concatenate([[0], np.cumsum(n_words)])
    padded = np.zeros(int(word_start[-1]) * 8, np.uint8)
    # byte i of string k goes to 8 * word_start[k] + (i - offsets[k])
    shift = np.repeat(8 * word_start[:-1] - (offsets[:-1] - offsets[0]), lengths)
    padded[np.arange(len(shift)) + shift] = data[offsets[0] : offsets[-1]]
    words = padded.view("<u8")
    position = (np.arange(len(words)) - np.repeat(word_start[:-1], n_words)).astype(np.uint64)
    keyed = _mix(words ^ _mix(seed + position))
    sums = np.zeros(len(lengths), np.uint64)
    has = n_words > 0
    if has.any():
        sums[has] = np.add.reduceat(keyed, word_start[:-1][has])  # wrapping uint64 sums
    return _mix(_mix(seed ^ lengths.astype(np.uint64)) ^ sums)


def stable_uniform(strings: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per string, a pure function of (seed, string)."""
    return stable_hashes(strings, seed).astype(np.float64) / float(1 << HASH_BITS)


@lru_cache(maxsize=None)  # sources are read once per process too: a process sees one version of its code
def code_version(*modules: str) -> str:
    """sha256 over the code of ``modules``, every module of ours they import (transitively), and the
    versions of the libraries whose behaviour shapes output bytes.

    "Ours" is :data:`OUR_PACKAGES` and the top-level packages of ``modules``. A module counts by its
    syntax tree without docstrings (:func:`_code_hash`); a named module that is a package covers every
    submodule below it too; presentation-only modules (``PRESENTATION_ONLY = True``) are left out, and
    their imports are not followed."""
    ours = tuple(sorted({*OUR_PACKAGES, *(m.split(".")[0] for m in modules)}))
    seen: dict[str, str | None] = {}
    todo = [sub for name in modules for sub in _package_modules(name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        src = _module_source(name)
        seen[name] = None
        if src is None:
            continue
        digest, presentation = _code_hash(src)
        if presentation:
            continue  # shows results, never shapes them: neither it nor what it imports is part of the key
        seen[name] = digest
        todo.extend(_our_imports(name, src, ours))
    return hash_json([sorted((k, v) for k, v in seen.items() if v is not None), library_versions()])


#: libraries whose upgrade can change what a stage writes (Parquet encoding, NFC, regexes, BPE, LID)
LIBRARIES = (
    "pyarrow",
    "polars",
    "numpy",
    "scipy",
    "tokenizers",
    "transformers",
    "datasets",
    "fasttext-numpy2",
    "orjson",
)


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of :data:`LIBRARIES`, and of Python and its Unicode tables: ``str.isalpha``, ``unicodedata``
    and regex classes shape quality signals and the alignment table, and change with the Python release."""
    import platform
    import unicodedata

    found = {"python": platform.python_version(), "unicode": unicodedata.unidata_version}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


@lru_cache(maxsize=None)
def _module_source(name: str) -> str | None:
    path = _module_file(name)
    return path.read_text(encoding="utf-8") if path is not None else None


@lru_cache(maxsize=None)
def _code_hash(src: str) -> tuple[str, bool]:
    """(sha256 of the module's canonical code, whether it declares ``PRESENTATION_ONLY = True``).

    The canonical code is ``ast.dump`` of the tree with every docstring removed (a body left empty
    gets a ``pass``, as Python would need), without field names or positions: comments, blank lines,
    formatting and docstrings do not count, everything the interpreter runs does."""
    tree = ast.parse(src)
    presentation = _presentation_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and _docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    code = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return hashlib.sha256(code.encode()).hexdigest(), presentation


def _docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _presentation_only(tree: ast.Module) -> bool:
    """Whether the module assigns ``PRESENTATION_ONLY = True`` (or ``PRESENTATION_ONLY: bool = True``) at top level."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if (
            any(isinstance(t, ast.Name) and t.id == "PRESENTATION_ONLY" for t in targets)
            and isinstance(value, ast.Constant)
            and value.value is True
        ):
            return True
    return False


@lru_cache(maxsize=None)
def _our_imports(name: str, src: str, ours: tuple[str, ...] = OUR_PACKAGES) -> list[str]:
    """Modules of the packages ``ours`` that module ``name`` (source ``src``) imports, anywhere in it.
    ``from pkg import x`` yields ``pkg`` and ``pkg.x`` (x may be a module); names that are not modules
    are dropped later, when no file is found for them."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
    return [m for m in found if m and m.split(".")[0] in ours]


def _package_modules(name: str) -> list[str]:
    """``name`` and, when it is a package, every module below it: the ``.py`` files in its folder and,
    recursively, in its subpackages' folders (those with an ``__init__.py``; caches, virtual
    environments and script folders are not), found on disk without importing any."""
    found = [name]
    for folder in _package_dirs(name):
        for path in sorted(folder.iterdir()):
            if path.suffix == ".py" and path.stem != "__init__" and path.stem.isidentifier():
                found.append(f"{name}.{path.stem}")
            elif path.is_dir() and path.name.isidentifier() and (path / "__init__.py").is_file():
                found += _package_modules(f"{name}.{path.name}")
    return found


def _is_package(name: str) -> bool:
    return bool(_package_dirs(name))


def _module_file(name: str) -> Path | None:
    """The ``.py`` file of module ``name`` (a package's ``__init__.py``), or None (not a module of
    source, or a name inside a module)."""
    return _locate(name)[0]


def _package_dirs(name: str) -> tuple[Path, ...]:
    """The folders a package's submodules live in; empty for a plain module or a name that is no module."""
    return _locate(name)[1]


@lru_cache(maxsize=None)
def _locate(name: str) -> tuple[Path | None, tuple[Path, ...]]:
    """(source file, package folders) of module ``name``, found on disk below its top-level package.

    Nothing is imported, not even the parent packages: ``from .model import X`` also yields ``model.X``,
    and importing ``model`` (and torch) just to say it is no module would cost seconds; and a stage
    package's ``__init__`` may import what a cache check must not pay for."""
    parent, _, leaf = name.rpartition(".")
    if not parent:
        spec = _find_spec(name)
        if spec is None:
            return None, ()
        origin = Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
        return origin, tuple(Path(d) for d in spec.submodule_search_locations or ())
    for folder in _package_dirs(parent):
        if (folder / leaf / "__init__.py").is_file():
            return folder / leaf / "__init__.py", (folder / leaf,)
        if (folder / f"{leaf}.py").is_file():
            return folder / f"{leaf}.py", ()
    return None, ()


@lru_cache(maxsize=None)
def _find_spec(name: str):
    """The spec of a top-level module: finding it imports nothing."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
