"""Parallel sets: folders of ``<set>.train.parquet`` and ``<set>.eval.parquet`` files.

One column per ISO 639-1 language code (plus an ``id``), one aligned segment per row.
``train`` parts may shape the vocabulary (translation pairs); ``eval`` parts are held
out: the langid stage removes documents that repeat an eval segment, so evaluation on
them stays unseen by everything trained downstream.
"""

from __future__ import annotations

import posixpath

import numpy as np
import polars as pl
import scipy.sparse as sp
from tokenizers import Tokenizer

from xlmflow import PACKAGE_ROOT
from xlmflow.storage import Location, read_table

from .tokens import presence

DEMO_PARALLEL = PACKAGE_ROOT / "data" / "parallel"
SPLITS = ("train", "eval")
PIVOT = "en"  # the language translation pairs and premiums are measured against


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


class Parallel:
    """Parallel files as binary segment x token matrices, each language column encoded once.

    ``pair(a, b)`` stacks, over every file holding both, the rows where both sides are
    present and not copies of each other (untranslated segments would teach identity).
    """

    def __init__(self, tok: Tokenizer, files: list[Location]):
        self.tok = tok
        # ``id`` names the segment, not Indonesian: parallel files keep their key there
        self.tables = [pl.from_arrow(read_table(loc)).drop("id", strict=False) for loc in files]
        self._matrices: dict[tuple[int, str], sp.csr_matrix] = {}

    def _matrix(self, i: int, lang: str) -> sp.csr_matrix:
        if (i, lang) not in self._matrices:
            texts = self.tables[i][lang].fill_null("").str.normalize("NFC").to_list()
            self._matrices[(i, lang)] = presence(self.tok, texts)
        return self._matrices[(i, lang)]

    def rows(self, i: int, a: str, b: str) -> np.ndarray:
        t = self.tables[i]
        return (
            t.select(pl.col(a).is_not_null() & pl.col(b).is_not_null() & (pl.col(a) != pl.col(b)))
            .to_series()
            .fill_null(False)
            .to_numpy()
        )

    def pair(self, a: str, b: str) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
        ma, mb = [], []
        for i, t in enumerate(self.tables):
            if a in t.columns and b in t.columns:
                keep = self.rows(i, a, b)
                ma.append(self._matrix(i, a)[keep])
                mb.append(self._matrix(i, b)[keep])
        if not ma or sum(m.shape[0] for m in ma) == 0:
            return None, None
        return sp.vstack(ma).tocsr(), sp.vstack(mb).tocsr()

    def texts(self, a: str, b: str) -> tuple[list[str], list[str]]:
        out_a, out_b = [], []
        for i, t in enumerate(self.tables):
            if a in t.columns and b in t.columns:
                sel = t.filter(pl.Series(self.rows(i, a, b)))
                out_a += sel[a].str.normalize("NFC").to_list()
                out_b += sel[b].str.normalize("NFC").to_list()
        return out_a, out_b
