"""Content fingerprints: what cache keys and manifests are made of.

Keys hash *content* (file bytes, parameters, code), never path names or times, so
a moved run directory still hits its cache and a touched-but-unchanged file does
not rerun. The code part covers every module of ours a stage imports, not only the
task function's text (Prefect's TASK_SOURCE misses callees: PrefectHQ/prefect#16925).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

CHUNK = 4 << 20
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
    with fs.open(path, "rb") as f:
        return sha256_stream(f)


def tree_sha256(fs, path: str) -> str:
    """Fingerprint of every file below a folder: relative names and contents."""
    files = sorted(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith("."))
    return hash_json([[p[len(path.rstrip("/")) + 1:], file_sha256(fs, p)[0]] for p in files])


def code_version(*modules: str) -> str:
    """sha256 over the source of ``modules`` and every xlmflow module they import, transitively."""
    seen: dict[str, str] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        src = _module_source(name)
        if src is None:
            continue
        seen[name] = hashlib.sha256(src.encode()).hexdigest()
        todo.extend(_our_imports(name, src))
    return hash_json(sorted(seen.items()))


@lru_cache(maxsize=None)
def _module_source(name: str) -> str | None:
    spec = _find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).read_text(encoding="utf-8")


def _our_imports(name: str, src: str) -> list[str]:
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
    return [m for m in found if m and m.split(".")[0] in OUR_PACKAGES]


def _is_package(name: str) -> bool:
    spec = _find_spec(name)
    return bool(spec and spec.submodule_search_locations)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # `from module import function` names no module
        return None
