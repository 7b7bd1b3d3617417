"""Parallel sets: folders of ``<set>.train.parquet`` and ``<set>.eval.parquet`` files.

One column per ISO 639-1 language code (plus an ``id``), one aligned segment per row.
``train`` parts may shape the vocabulary (translation pairs); ``eval`` parts are held
out: the langid stage removes documents that repeat an eval segment, so evaluation on
them stays unseen by everything trained downstream.
"""

from __future__ import annotations

import posixpath

import polars as pl

from xlmflow import PACKAGE_ROOT
from xlmflow.storage import Location, read_table

DEMO_PARALLEL = PACKAGE_ROOT / "data" / "parallel"
SPLITS = ("train", "eval")


def parallel_files(folder: str | None, splits: tuple[str, ...] = SPLITS) -> list[tuple[str, Location]]:
    """(split, file) for every ``<set>.<split>.parquet`` in the folder, sorted by name."""
    if not folder:
        return []
    loc = Location.of(folder)
    if not loc.is_dir():
        raise ValueError(f"parallel {folder!r}: not a folder; give one holding <set>.train.parquet files, or None")
    found = []
    for p in sorted(loc.fs.ls(loc.path, detail=False)):
        name = posixpath.basename(p.rstrip("/"))
        for split in splits:
            if name.endswith(f".{split}.parquet"):
                found.append((split, loc.child(name)))
    return found


def segments(files: list[Location]) -> pl.Series:
    """Every segment of every language column of ``files``, one string each (nulls dropped)."""
    cols = []
    for f in files:
        table = read_table(f)
        cols += [pl.from_arrow(table.column(name)).cast(pl.String) for name in table.column_names if name != "id"]
    return pl.concat(cols).drop_nulls().rename("segment") if cols else pl.Series("segment", [], pl.String)
