"""Decisions on scored documents: which language, kept or rejected and why.

Rules only: they read the stored LID scores and quality signals (see :mod:`.lid`,
:mod:`.quality`) and never run a model, so a new threshold re-runs only this step.
"""

from __future__ import annotations

import polars as pl

from xlmflow.storage import Location
from xlmflow.tasks.common import parallel_sets as parallel
from xlmflow.tasks.langid import dedup, quality

#: claimed codes the model spells differently (it says "no" for Norwegian Bokmål)
CLAIM_ALIASES = {"nb": "no", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}


def normalise_lang(code: pl.Expr) -> pl.Expr:
    """``zh-TW`` -> ``zh``, ``pt_BR`` -> ``pt``, ``nb`` -> ``no``; lower case."""
    base = (
        code.str.to_lowercase()
        .str.split_exact("-", 1)
        .struct.field("field_0")
        .str.split_exact("_", 1)
        .struct.field("field_0")
    )
    return base.replace(CLAIM_ALIASES)


def decide(df: pl.DataFrame, params, holdout: pl.Series | None = None) -> pl.DataFrame:
    """Adds ``lang``, ``lid_prob``, ``confident`` and ``reason`` (null = kept) to scores (+ claimed_lang).

    ``params``: the langid stage's :class:`~.langid.LangidParams` (its threshold, keep_langs, mismatch, quality).

    ``holdout``: normalised held-out segments (see :func:`holdout_segments`); a document
    equal to one is rejected first, as ``eval_holdout``, whatever else is true of it. Next, one
    sharing an n-gram with one (the ``eval_ngrams`` signal, :mod:`.overlap`) is rejected as
    ``eval_overlap``: both keep evaluation text out of training, whatever the other rules say.
    The exact rule stays apart: it also catches copies of segments too short to hold an n-gram.
    """
    top = pl.col("lid_labels").list.first()
    lang = pl.when(params.fix_zh_ja & (top == "ja") & ~pl.col("has_kana")).then(pl.lit("zh")).otherwise(top)
    df = df.with_columns(
        lang.alias("lang"),
        pl.col("lid_probs").list.first().alias("lid_prob"),
        normalise_lang(pl.col("claimed_lang")).alias("claimed_norm"),
    )
    thr = pl.col("lang").replace_strict(params.thresholds, default=params.threshold, return_dtype=pl.Float64)
    length, other = quality.reject_reason(params.quality)
    confident = pl.col("lid_prob").fill_null(0) >= thr
    keep = pl.lit(True) if params.keep_langs is None else pl.col("lang").is_in(sorted(params.keep_langs))
    mismatched = pl.col("claimed_norm").is_not_null() & (pl.col("claimed_norm") != pl.col("lang"))
    held = pl.lit(False) if holdout is None else dedup.normalise(pl.col("text")).is_in(holdout.implode())
    reason = (
        pl.when(held)
        .then(pl.lit("eval_holdout"))
        .when(pl.col("eval_ngrams") > 0)
        .then(pl.lit("eval_overlap"))
        .when(length.is_not_null())
        .then(length)
        .when(~confident)
        .then(pl.lit("lid_low_confidence"))
        .when(~keep)
        .then(pl.lit("lang_not_kept"))
        .when(pl.lit(params.mismatch == "drop") & mismatched)
        .then(pl.lit("lang_mismatch"))
        .otherwise(other)
    )
    return df.with_columns(
        confident.alias("confident"),
        reason.alias("reason"),
        (length.is_null() & confident & mismatched).alias("mismatched"),
    )


def holdout_segments(files: list[Location]) -> pl.Series | None:
    """The held-out eval segments, normalised as exact dedup normalises text (None when there are none)."""
    if not files:
        return None
    return parallel.segments(files).to_frame().select(dedup.normalise(pl.col("segment"))).to_series().unique().sort()
