"""Labelled sets: a user's texts with a class and a language, for zero-shot cross-lingual classification.

A labelled set is one Parquet or TSV table with the columns ``text``, ``label`` and ``lang`` (an ISO 639-1
code), and optionally ``split`` (``train`` or ``eval``); other columns are ignored. The finetune stage trains a
classifier on the ``train`` rows of one language (``finetune.classify_lang``) and the evaluate stage tests it on
the ``eval`` rows of every language (the XNLI protocol: train on one language, test on all). Without a ``split``
column a seeded hash of each row's text holds out :data:`EVAL_FRACTION` of the rows, so the split depends on the
text alone, never on row order. Errors name the file, the row and what to do.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from xlmflow.storage import Location, stable_hashes
from xlmflow.storage.fingerprint import HASH_BITS
from xlmflow.tasks.common.parallel_sets import FORMATS, check_lang_code, read_table_file

COLUMNS = ("text", "label", "lang")
SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2  # of the rows, held out by text hash when the table has no split column
SEED = 0
EVAL_ROWS = "eval_rows.parquet"  # in a labelled set's classifier folder: the rows the evaluate stage tests it on


def read_labelled(loc: Location) -> pl.DataFrame:
    """The table as ``text``, ``label``, ``lang``, ``split`` (strings); rows with an empty text are left out."""
    if not loc.exists():
        raise ValueError(f"labelled set {loc}: no such file")
    if not loc.name.endswith(FORMATS):
        raise ValueError(f"labelled set {loc}: not a Parquet or TSV file (name it .parquet or .tsv)")
    df = read_table_file(loc, f"labelled set {loc}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"labelled set {loc}: no {', '.join(missing)} column (columns: {', '.join(df.columns)}); a labelled set "
            f"has one row per text: text, label, lang (and optionally split: train or eval)"
        )
    df = df.select([*COLUMNS, *(["split"] if "split" in df.columns else [])]).with_columns(pl.all().cast(pl.String))
    df = df.with_row_index("row", offset=1)
    for column in ("label", "lang"):
        if (bad := df.filter(pl.col(column).is_null() | (pl.col(column) == ""))).height:
            raise ValueError(f"labelled set {loc}: row {bad['row'][0]} has no {column}; give every row one")
    for code in df["lang"].unique().sort().to_list():
        if (why := check_lang_code(code)) is not None:
            row = df.filter(pl.col("lang") == code)["row"][0]
            raise ValueError(f"labelled set {loc}: row {row}: {why}")
    if "split" in df.columns:
        bad = df.filter(~pl.col("split").is_in(SPLITS))
        if bad.height:
            raise ValueError(
                f"labelled set {loc}: row {bad['row'][0]} has split {bad['split'][0]!r}; use train or eval"
            )
    else:
        held = stable_hashes(pa.array(df["text"].fill_null("").to_list()), SEED) < int(EVAL_FRACTION * (1 << HASH_BITS))
        df = df.with_columns(pl.Series("split", np.where(held, "eval", "train")))
    return df.filter(pl.col("text").is_not_null() & (pl.col("text") != "")).drop("row")


def train_rows(df: pl.DataFrame, lang: str, min_rows: int) -> pl.DataFrame:
    """``lang``'s train rows as ``text`` and ``class``, of the classes with at least ``min_rows`` of them (a rarer
    class cannot be learnt)."""
    rows = df.filter((pl.col("split") == "train") & (pl.col("lang") == lang))
    rows = rows.select("text", pl.col("label").alias("class"))
    counts = rows["class"].value_counts()
    return rows.filter(pl.col("class").is_in(sorted(counts.filter(pl.col("count") >= min_rows)["class"])))


def eval_rows(df: pl.DataFrame) -> pl.DataFrame:
    """The eval rows of every language: ``text``, ``class``, ``lang``."""
    return df.filter(pl.col("split") == "eval").select("text", pl.col("label").alias("class"), "lang")
