"""Which input file a document came from, from its own columns.

The ingest stage names each input file's unit ``<its path as a slug>-<the first 8 hex digits of its key>`` and
gives its documents the ids ``<key>-<record>`` and the ``source`` column ``<its path>``, so any later stage can
tell the documents of one input apart from a table's ``source`` and ``doc_id`` columns alone (the shard stage's
``drop_removed``: the documents of input files gone from the sources).
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pyarrow as pa


def input_name(rel: str, key: str) -> str:
    """The ingest unit's name of the input ``rel`` (its path inside its source) with key ``key``."""
    return f"{_slug(rel)}-{key[:8]}"


def _slug(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel)[-80:].strip("._") or "input"


def input_names(table: pa.Table | pa.RecordBatch) -> pl.Series:
    """The input name (:func:`input_name`) of each row of ``table`` (columns ``source``, ``doc_id``). The slug is
    made once per distinct ``source`` (a file's documents share it), never per document."""
    df = pl.from_arrow(pa.table({"source": table.column("source"), "doc_id": table.column("doc_id")}))
    slugs = {s: _slug(s) for s in df.get_column("source").unique().drop_nulls().to_list()}
    name = pl.col("source").replace_strict(slugs, default=None, return_dtype=pl.String)
    return df.select(pl.concat_str(name, pl.lit("-"), pl.col("doc_id").str.slice(0, 8))).to_series()


def from_inputs(table: pa.Table | pa.RecordBatch, names: set[str] | list[str]) -> np.ndarray:
    """Boolean mask of ``table``'s rows whose input is one of ``names``."""
    return input_names(table).is_in(list(names)).fill_null(False).to_numpy()
