"""Quality signals (numbers, computed once with the LID scores) and the rules that judge them.

In the spirit of Gopher (Rae et al. 2021), C4 and FineWeb: length bounds, mean word
length, symbol / digit / alphabetic character ratios, duplicated lines and repeated
word n-grams. Everything is a polars expression over a whole record batch.

Script-aware: Chinese, Japanese, Thai, Lao, Khmer, Myanmar and Tibetan put no spaces
between words, so a document whose letters are mostly of those scripts is
``unspaced`` and measured in characters (its "words" are its letters, its n-grams
character n-grams); mean word length does not apply to it.

Signals are stored apart from the thresholds (:class:`QualityParams`), so changing a
threshold re-runs only the cheap filtering step. Repetition signals look at the first
``REPETITION_PREFIX`` characters so one huge document cannot blow up memory.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

REPETITION_PREFIX = 100_000
MIN_REPETITION_WORDS = 10
UNSPACED_SCRIPTS = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]"
KANA = r"[\p{Hiragana}\p{Katakana}]"
#: characters that are neither letters, marks, digits, space nor ordinary prose punctuation
SYMBOLS = r"[^\p{L}\p{M}\p{N}\s.,;:!?'\"«»„“”‘’()\-–—…、。，；：！？（）「」『』《》・·]"
WORD_NGRAM, CHAR_NGRAM = 3, 5


class QualityParams(BaseModel):
    """Quality thresholds. The defaults are loose on purpose: the demo corpus is documentation
    paragraphs (median 42 characters, with commands, paths and numbers), where Gopher's
    web-page bounds (at least 50 words, mean word length 3 to 10) would drop most real text.
    min_words = 3 still drops the one- and two-word UI labels ("OK", "Coller"),
    which are no paragraphs and which no LID model labels reliably."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    min_words: int = Field(3, ge=0, description="spaced scripts: fewest whitespace-separated words")
    min_unspaced_chars: int = Field(5, ge=0, description="zh/ja/th...: fewest letters")
    max_words: int = Field(100_000, ge=0, description="most words (letters for unspaced scripts); Gopher's bound")
    min_mean_word_len: float = Field(2.0, ge=0, description="spaced scripts: shortest mean word length, in characters")
    max_mean_word_len: float = Field(20.0, ge=0, description="spaced scripts: longest mean word length, in characters")
    max_symbol_ratio: float = Field(0.3, ge=0, le=1, description="symbol characters / non-space characters")
    max_digit_ratio: float = Field(0.4, ge=0, le=1, description="digits / non-space characters")
    min_alpha_ratio: float = Field(0.4, ge=0, le=1, description="letters / non-space characters")
    max_dup_line_frac: float = Field(0.3, ge=0, le=1, description="share of lines that repeat an earlier line")
    max_rep_ngram_frac: float = Field(0.3, ge=0, le=1, description="share of word 3-grams (char 5-grams) that repeat")


def signal_columns() -> list[pl.Expr]:
    """Signals of the ``text`` column, one number (or flag) per document."""
    text = pl.col("text")
    nonspace = (text.str.len_chars() - text.str.count_matches(r"\s")).cast(pl.Int64)
    letters = text.str.count_matches(r"\p{L}").cast(pl.Int64)
    unspaced_letters = text.str.count_matches(UNSPACED_SCRIPTS).cast(pl.Int64)
    unspaced = unspaced_letters * 2 > letters
    words = text.str.count_matches(r"\S+").cast(pl.Int64)
    lines = text.str.strip_chars().str.split("\n")
    denom = pl.max_horizontal(nonspace, pl.lit(1))
    return [
        text.str.len_chars().cast(pl.Int64).alias("n_chars"),
        unspaced.alias("unspaced"),
        pl.when(unspaced).then(letters).otherwise(words).alias("n_words"),
        pl.when(unspaced | (words == 0))
        .then(None)
        .otherwise(nonspace / pl.max_horizontal(words, pl.lit(1)))
        .cast(pl.Float32)
        .alias("mean_word_len"),
        (text.str.count_matches(SYMBOLS) / denom).cast(pl.Float32).alias("symbol_ratio"),
        (text.str.count_matches(r"\p{N}") / denom).cast(pl.Float32).alias("digit_ratio"),
        (letters / denom).cast(pl.Float32).alias("alpha_ratio"),
        (1 - lines.list.n_unique() / pl.max_horizontal(lines.list.len(), pl.lit(1)))
        .cast(pl.Float32)
        .alias("dup_line_frac"),
        text.str.contains(KANA).alias("has_kana"),
    ]


def repeated_ngram_frac(texts: pl.Series, unspaced: pl.Series, n_words: pl.Series) -> pl.Series:
    """Share of n-grams (word 3-grams; character 5-grams when unspaced) repeating an earlier one.

    Documents under ``MIN_REPETITION_WORDS`` words score 0 without being tokenised (most
    demo paragraphs: repetition is a property of long texts, and this keeps scoring fast).

    Vectorised on an exploded token frame: tokens are hashed, n-grams are sums of
    shifted hashes within a document, and distinct n-grams are counted per document.
    """
    n = len(texts)
    df = (
        pl.DataFrame({"text": texts, "unspaced": unspaced, "n_words": n_words})
        .with_row_index("i")
        .filter(pl.col("n_words") >= MIN_REPETITION_WORDS)
    )
    prefix = pl.col("text").str.slice(0, REPETITION_PREFIX)
    tokens = (
        df.lazy()
        .select(
            "i",
            "unspaced",
            pl.when(pl.col("unspaced"))
            .then(prefix.str.extract_all(r"\S"))
            .otherwise(prefix.str.extract_all(r"\S+"))
            .alias("tok"),
        )
        .filter(pl.col("tok").list.len() >= WORD_NGRAM)
        .explode("tok")
    )
    h = pl.col("tok").hash(17)
    word_ng = h + h.shift(-1) * 0x9E3779B1 + h.shift(-2) * 0x85EBCA77
    char_ng = word_ng + h.shift(-3) * 0xC2B2AE3D + h.shift(-4) * 0x27D4EB2F
    size = pl.when(pl.col("unspaced")).then(CHAR_NGRAM).otherwise(WORD_NGRAM)
    grams = (
        tokens.with_columns(
            pl.when(pl.col("unspaced")).then(char_ng).otherwise(word_ng).alias("ng"),
            (pl.col("i").shift(-(CHAR_NGRAM - 1)) == pl.col("i")).alias("ok5"),
            (pl.col("i").shift(-(WORD_NGRAM - 1)) == pl.col("i")).alias("ok3"),
        )
        .filter(pl.when(size == CHAR_NGRAM).then(pl.col("ok5")).otherwise(pl.col("ok3")))
        .group_by("i")
        .agg((1 - pl.col("ng").n_unique() / pl.len()).cast(pl.Float32).alias("rep"))
        .collect()
    )
    full = pl.DataFrame({"i": pl.arange(0, n, dtype=pl.UInt32, eager=True)}).join(
        grams, on="i", how="left", maintain_order="left"
    )
    return full["rep"].fill_null(0.0).alias("rep_ngram_frac")


def signals(texts: pl.Series) -> pl.DataFrame:
    """All quality signals of a batch of texts, in input order."""
    df = pl.DataFrame({"text": texts}).select(signal_columns())
    return df.with_columns(repeated_ngram_frac(texts, df["unspaced"], df["n_words"]))


def reject_reason(q: QualityParams) -> tuple[pl.Expr, pl.Expr]:
    """(length reason, other quality reason): the first rule a document breaks, or null.

    Length is judged before language ID (a two-word label has no reliable language);
    the other rules after, so a rejected document names the most basic problem.
    """
    mwl = pl.col("mean_word_len")
    length = (
        pl.when(pl.col("n_words") == 0)
        .then(pl.lit("empty"))
        .when(pl.col("unspaced") & (pl.col("n_words") < q.min_unspaced_chars))
        .then(pl.lit("too_short"))
        .when(~pl.col("unspaced") & (pl.col("n_words") < q.min_words))
        .then(pl.lit("too_short"))
        .when(pl.col("n_words") > q.max_words)
        .then(pl.lit("too_long"))
    )
    other = (
        pl.when(mwl.is_not_null() & ((mwl < q.min_mean_word_len) | (mwl > q.max_mean_word_len)))
        .then(pl.lit("mean_word_length"))
        .when(pl.col("symbol_ratio") > q.max_symbol_ratio)
        .then(pl.lit("symbol_ratio"))
        .when(pl.col("digit_ratio") > q.max_digit_ratio)
        .then(pl.lit("digit_ratio"))
        .when(pl.col("alpha_ratio") < q.min_alpha_ratio)
        .then(pl.lit("alpha_ratio"))
        .when(pl.col("dup_line_frac") > q.max_dup_line_frac)
        .then(pl.lit("duplicate_lines"))
        .when(pl.col("rep_ngram_frac") > q.max_rep_ngram_frac)
        .then(pl.lit("repeated_ngrams"))
    )
    return length, other
