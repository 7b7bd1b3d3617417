"""Increments and versions: what an incremental run appends, and the earlier models it keeps.

An **increment** is the input files one run saw for the first time. Its documents get folders of their own,
``<group>/lang=<xx>/inc=NNNN/``, so a later increment appends folders and never rewrites an earlier one. The
langid stage keeps the ledger (:data:`LEDGER`, committed with the stage): every increment's number, date,
input units and the units that decided its documents. A run without ``--incremental`` (or the first run)
makes one increment of everything.

A **version** is an earlier committed model: before a train commit replaces ``train/``, the committed folder is
linked (hard links: no copy, as committed files are never changed in place) into
``versions/train/vNNNN-<fingerprint>/``, written aside and renamed, so a bad night is rolled back with
``xlmflow rollback``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .layout import Location, RunDir, partition, partition_value
from .manifest import MANIFEST, read_manifest

LEDGER = "increments.json"  # in the langid stage folder
INC = "inc"
VERSIONS = "versions"
EVALUATION = "evaluation.json"  # a kept version's evaluation (the evaluate stage's metrics.json of that model)


def increment_part(number: int) -> str:
    """``inc=NNNN``: the folder of one increment inside a language's partition."""
    return partition(INC, f"{number:04d}")


def increment_of(path: str) -> int | None:
    """The increment a relative path lies in (``.../inc=0002/...`` -> 2), or None."""
    value = partition_value(path, INC)
    return int(value) if value is not None else None


def read_ledger(stage: Location) -> dict[str, Any] | None:
    """The ledger in a stage folder (None: none). Read whether or not the stage's manifest is there: a commit
    killed after the old manifest went still leaves a whole ledger (the old one, or the new one renamed into
    place, whose units are all committed), so a run started again appends what the killed one would have."""
    loc = stage.child(LEDGER)
    try:
        with loc.open("rb") as f:
            return orjson.loads(f.read())
    except FileNotFoundError:
        return None


def ledger_bytes(ledger: dict[str, Any]) -> bytes:
    return orjson.dumps(ledger, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


# ---------------------------------------------------------------- versions of a committed stage (the model)
@dataclass(frozen=True)
class Version:
    number: int
    fingerprint: str  # the committed folder's manifest fingerprint
    loc: Location

    @property
    def name(self) -> str:
        return self.loc.name


def versions(run: RunDir, stage: str) -> list[Version]:
    """The kept versions of ``stage``, oldest first (only whole ones: a version folder holds its manifest)."""
    folder = run.root.child(VERSIONS, stage)
    out = []
    for name in folder.subfolders():
        number, _, fp = name.partition("-")
        m = read_manifest(folder.child(name))
        if number.startswith("v") and number[1:].isdigit() and m is not None:
            out.append(Version(int(number[1:]), m.fingerprint, folder.child(name)))
    return sorted(out, key=lambda v: v.number)


def archive(run: RunDir, stage: str, keep: int, extra: dict[str, Location] | None = None) -> Version | None:
    """Keep the committed ``stage`` folder as its newest version (once per fingerprint), with ``extra`` files
    beside it (name -> file: the evaluation of that model); the oldest beyond ``keep`` go. None: nothing
    committed. Local run directories only (training writes with plain file operations anyway)."""
    src = run.stage(stage)
    m = read_manifest(src)
    if m is None:
        return None
    have = versions(run, stage)
    for v in have:
        if v.fingerprint == m.fingerprint:
            return v
    folder = run.root.child(VERSIONS, stage)
    folder.makedirs()
    number = (have[-1].number if have else 0) + 1
    dst = folder.child(f"v{number:04d}-{m.fingerprint[:12]}")
    tmp = folder.child(f".aside-{uuid.uuid4().hex[:12]}")
    _link_tree(src.path, tmp.path)
    for name, loc in (extra or {}).items():
        if loc.exists():
            shutil.copyfile(loc.path, os.path.join(tmp.path, name))
    os.rename(tmp.path, dst.path)
    for old in [*have, Version(number, m.fingerprint, dst)][:-keep] if keep else []:
        shutil.rmtree(old.loc.path, ignore_errors=True)
    return Version(number, m.fingerprint, dst)


def restore(run: RunDir, stage: str, version: Version) -> None:
    """Make ``version`` the committed ``stage`` folder: linked aside, then swapped in by renames (the caller keeps
    the folder it replaces as a version first, so a rollback can itself be rolled back)."""
    src, dst = version.loc, run.stage(stage)
    tmp = run.root.child(f".{stage}-restore-{uuid.uuid4().hex[:8]}")
    _link_tree(src.path, tmp.path)
    listed = {f.path.split("/")[0] for f in read_manifest(src).files} | {MANIFEST}
    for name in os.listdir(tmp.path):  # the version's own extras (its evaluation) are not the stage's files
        if name not in listed:
            os.remove(os.path.join(tmp.path, name))
    old = run.root.child(f".{stage}-old-{uuid.uuid4().hex[:8]}")
    if dst.exists():
        os.rename(dst.path, old.path)
    os.rename(tmp.path, dst.path)
    shutil.rmtree(old.path, ignore_errors=True)


def _link_tree(src: str, dst: str) -> None:
    """A copy of the folder ``src`` at ``dst`` made of hard links (a plain copy where links are refused)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(".*"))
