"""Eval text held out by n-gram: how many n-grams each document shares with the held-out eval segments.

The exact holdout (:func:`.decide.holdout_segments`) removes only documents equal to an eval segment; a
paragraph that contains one, or shares a long stretch of one, stays, and the evaluation then measures
text the model was trained on. Here every document gets ``eval_ngrams``, how many of its n-grams occur
in an eval segment, stored with the quality signals; :func:`.decide.decide` rejects a document with any
as ``eval_overlap``.

Units are tokenizer-free (langid runs before the vocabulary exists) but token-sized,
:func:`~xlmflow.tasks.common.ngrams.text_units`: pieces of up to 2 capitals or 4 other letters, up to 3
digits, single punctuation marks, single CJK/Thai characters (0.80-1.09 tokens of the demo's vocabulary
per unit in en, fr, de, es, zh, ru, ar). Whole words would not do: the 13 tokens the evaluate stage
matches are ~8 English words (1.6 tokens a word, punctuation included), ~6 German or Russian ones (2.0-2.2),
~11 Han characters, 4 words of a path (`` /etc/apt/sources.list`` is 9 tokens), so no word n both catches
the overlaps and spares ordinary phrases: word 8-grams left 13% of the demo's handbook segments
contaminated, word 6-grams (punctuation as words) 0.8% but removed 16% of its training documents.

``holdout_ngram`` = 11 units, a little under the 13 tokens, because tokens per unit vary along a text
(a word in capitals, ``УГЛУБЛЯЕМСЯ`` or ``FORECAST.ETS.PI.MULT``, is 14 tokens on its own). Measured on
the demo (``bench/contamination.py``; eval segments of at least 13 tokens, handbook / LibreOffice help):
contamination 21.4% / 19.0% with the exact holdout alone, 0.58% / 0.46% with n = 11, which removed 8.4%
of the clean documents (112,201 -> 102,766). Removing every document that shares a 13-token n-gram of the
run's own tokenizer with a segment would take 2.7%; the rest shares shorter boilerplate (menu paths, URLs,
sidebar titles). On the same training documents n = 10 leaves 0.4% / 0.2% and removes 11%, n = 12 leaves
1.7% / 1.0% (6.7%). False positives on ordinary text, taken as the train segments of one set sharing an
11-gram with the eval segments of the other (a different manual): at most 0.09% per language. What is
left is mostly not copied text: capitals, keyboard shortcuts and function names that the BPE cuts into 13
tokens, and eval segments too short to hold 11 units (copies of those are caught only whole, by the exact
holdout)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl

from xlmflow.storage import Location
from xlmflow.tasks.common import parallel_sets as parallel
from xlmflow.tasks.common.ngrams import NgramIndex, text_units


@lru_cache(maxsize=4)
def eval_index(files: tuple[tuple[str, str], ...], n: int) -> NgramIndex | None:
    """The n-grams of every eval segment of ``files``, (uri, content fingerprint) pairs, in every language column;
    None without files or with n = 0. Built once per process for all the units that share it."""
    if not files or n <= 0:
        return None
    flat, starts, _ = text_units(parallel.segments([Location(uri) for uri, _ in files]))
    index = NgramIndex(n)
    index.add(flat, starts)
    index.freeze()
    return index


def eval_ngrams(index: NgramIndex | None, texts: pl.Series) -> pl.Series:
    """Per text: how many of its n-gram positions occur in an eval segment (0 without an index)."""
    if index is None:
        return pl.Series("eval_ngrams", np.zeros(len(texts), np.int32))
    flat, starts, _ = text_units(texts)
    return pl.Series("eval_ngrams", index.counts(flat, starts).astype(np.int32))
