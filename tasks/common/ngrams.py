"""Hashed n-grams of token streams, shared by the langid stage (eval text held out) and the evaluate stage
(contamination): one definition of "two texts share an n-gram", vectorised in numpy.

A stream is a flat array of unit ids (token ids, or 64-bit hashes of text units) with each document's start
offset; an n-gram is n consecutive units inside one document, hashed by a polynomial over the ids and a
splitmix64 finaliser. 64-bit hashes make false hits negligible: an index of 10^8 n-grams queried 10^9
times meets a colliding hash with probability ~10^17 / 2^64, under 1%.

:func:`text_units` turns text into tokenizer-free units (the langid stage runs before any tokenizer exists)
that stand in for byte-level BPE tokens: pieces of at most 2 capitals or 4 other letters of a word, at most 3
digits, one punctuation mark or symbol, one character of a script written without spaces (zh, ja, th). On the
demo's eval segments that is 0.80-1.09 tokens of the run's 16k vocabulary per unit in every language (en, fr,
de, es, zh, ru, ar), where whole words are 1.1-2.2 tokens (1.1 for Han characters, 2.2 for Russian words): an
n-gram of units is about as long in every script as an n-gram of tokens, so one n serves them all.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from xlmflow.storage.fingerprint import stable_hashes64

_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial hash
#: scripts written without spaces between words (as :mod:`xlmflow.tasks.langid.quality`): one unit per character
UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
#: a character of an unspaced script, up to 2 capitals, up to 4 other letters (with their marks), up to 3 digits,
#: or one mark of punctuation or symbol; white space only separates units ("C|onfi|gura|tion", "/|etc|/|apt",
#: "202|3", "RA|ID"): BPE splits capitals finer than lower case, a word in capitals ~2 letters a token
UNIT = (
    rf"[{UNSPACED}]|[\p{{Lu}}\p{{Lt}}]{{1,2}}|[[\p{{L}}\p{{M}}]--[{UNSPACED}\p{{Lu}}\p{{Lt}}]]{{1,4}}"
    r"|\p{N}{1,3}|[^\s\p{L}\p{M}\p{N}]"
)
_UNIT_SEED = 0x6E6772616D73  # seeds the unit hashes: any fixed value, it only has to stay the same


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by a sort: numpy 2.4's ``np.unique`` hashes, ~70x slower on millions of uint64 hashes
    (``python bench/bench_unique.py``: 3.58 s against 0.05 s for 4M, numpy 2.4.6)."""
    ordered = np.sort(values)
    keep = np.ones(len(ordered), bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def members(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One bool per value: it is in ``sorted_values`` (ascending, unique), by binary search."""
    pos = np.searchsorted(sorted_values, values)
    found = pos < len(sorted_values)
    found[found] = sorted_values[pos[found]] == values[found]
    return found


def mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial's bits so nearby n-grams do not share low bits."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def ngram_hashes(flat: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-unit windows inside one document each, and the index of that document."""
    starts = np.asarray(starts, dtype=np.int64)
    if len(flat) < n or len(starts) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    windows = sliding_window_view(np.asarray(flat).astype(np.uint64), n)
    h = np.zeros(len(windows), np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        for j in range(n):
            h *= _MUL
            h += windows[:, j]
            h += np.uint64(1)
    h = mix(h)
    # the document of every unit (-1 before the first start), by lengths: linear, no search per window
    lengths = np.diff(np.append(starts, len(flat)))
    doc = np.concatenate([np.full(starts[0], -1), np.repeat(np.arange(len(starts)), lengths)])
    inside = (doc[: len(windows)] >= 0) & (doc[: len(windows)] == doc[n - 1 :])
    return h[inside], doc[: len(windows)][inside]


def flatten(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated ids, each document's start offset) of a list of id arrays."""
    if not docs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]]).astype(np.int64)
    return np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]), starts


def text_units(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenizer-free units of texts: (stable 64-bit hash of every unit, flat; each text's start offset;
    each text's number of units). Units are :data:`UNIT` matches in the NFKC form of the text (full-width
    forms and ligatures do not hide a copy), lower-cased: "RA|ID" and "ra|id" are equal units, though a
    word changed from lower case to capitals is cut differently. Null texts have no units."""
    units = texts.cast(pl.String).str.normalize("NFKC").str.extract_all(UNIT)
    counts = units.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = units.explode().drop_nulls().str.to_lowercase().to_arrow()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return stable_hashes64(flat, _UNIT_SEED), starts, counts


class NgramIndex:
    """A sorted set of hashed n-grams (of a training stream, or of held-out segments), queried by documents.

    Only n-grams inside one document count: the stream's document order is an artefact of shuffling, so an
    n-gram across a boundary is not text anyone wrote.
    """

    def __init__(self, n: int = 13):
        self.n = n
        self._parts: list[np.ndarray] = []
        self._sorted = np.zeros(0, np.uint64)

    def add(self, flat_ids: np.ndarray, doc_starts: np.ndarray) -> None:
        """Index whole documents: ``flat_ids`` concatenated, ``doc_starts`` each one's offset (ascending)."""
        hashes, _ = ngram_hashes(flat_ids, doc_starts, self.n)
        self._parts.append(sorted_unique(hashes))

    def freeze(self) -> None:
        """Sort and deduplicate everything added so far (``hits``, ``counts`` and ``size`` call it when needed)."""
        if self._parts:
            self._sorted, self._parts = sorted_unique(np.concatenate([self._sorted, *self._parts])), []

    def counts(self, flat_ids: np.ndarray, doc_starts: np.ndarray) -> np.ndarray:
        """Per document (as in :meth:`add`): how many of its n-gram positions are in the index."""
        self.freeze()
        hashes, doc = ngram_hashes(flat_ids, doc_starts, self.n)
        return np.bincount(doc[members(self._sorted, hashes)], minlength=len(doc_starts))

    def hits(self, docs: list[np.ndarray]) -> np.ndarray:
        """One bool per document: it shares at least one n-gram with the index."""
        return self.counts(*flatten(docs)) > 0

    @property
    def size(self) -> int:
        """Distinct n-grams indexed."""
        self.freeze()
        return len(self._sorted)
