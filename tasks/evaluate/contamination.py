"""Contamination of a parallel set: its eval segments sharing an n-unit n-gram with the train shards, out of the
segments of at least n units.

Units, not the model's tokens: the tokenizer-free text units of :func:`~xlmflow.tasks.common.ngrams.text_units`
(pieces of up to 2 capitals or 4 other letters, one mark, one CJK character; ~1 token of a 16k vocabulary), which
the langid stage's eval holdout also counts in. In tokens the measure would change with the vocabulary: 13 tokens of
the demo's 4k vocabulary are two or three words, so common phrases ("the following command") counted as
contamination (8-10% of the demo's segments, against under 1% in units). The train shards are decoded back to text
(their ids are the run's tokenizer's) and cut into units once per process and shard stage.
"""

from __future__ import annotations

import threading

import polars as pl

from xlmflow.storage import Location, read_batches
from xlmflow.storage import shards as shard_store
from xlmflow.tasks.common.ngrams import NgramIndex, text_units

_INDEXES: dict[tuple[str, str, int], NgramIndex] = {}  # the last shard stage's, per process (set units share it)
_LOCK = threading.Lock()


def train_ngrams(tok, shard_uri: str, fingerprint: str, n: int) -> NgramIndex:
    """Every n-unit n-gram of the train shards' documents (decoded with ``tok``, the tokenizer that wrote them),
    built once per process, shard stage and n: set units on threads wait for the first to build it."""
    key = (shard_uri, fingerprint, n)
    with _LOCK:
        if key not in _INDEXES:
            _INDEXES.clear()
            _INDEXES[key] = _build(tok, shard_uri, n)
        return _INDEXES[key]


def _build(tok, shard_uri: str, n: int) -> NgramIndex:
    index = NgramIndex(n)
    for s in shard_store.list_shards(shard_uri, "train"):
        shard_store.verify(s)
        for batch in read_batches(Location(s.uri), ["input_ids"], 4096):
            texts = tok.decode_batch(batch.column(0).to_pylist(), skip_special_tokens=True)
            flat, starts, _ = text_units(pl.Series(texts, dtype=pl.String))
            index.add(flat, starts)
    index.freeze()
    return index


def count_contamination(tok, shard_uri: str, fingerprint: str, texts: dict, n: int) -> dict:
    """Eval segments sharing an n-unit n-gram with the train shards, per language and for the set.

    The share's denominator is the *eligible* segments, those of at least n units: a shorter one cannot
    share an n-gram, so counting it would dilute the share; those are counted apart (``too_short``).
    Empty segments are neither. ``share`` is None where no segment is eligible."""
    index = train_ngrams(tok, shard_uri, fingerprint, n)
    out: dict[str, dict] = {}
    for lang, column in texts.items():
        segs = pl.Series([t for t in column if t], dtype=pl.String)
        flat, starts, counts = text_units(segs)
        eligible = counts >= n
        hit = index.counts(flat, starts) > 0
        out[lang] = _counts(int((hit & eligible).sum()), int(eligible.sum()), int((~eligible).sum()))
    total = {k: sum(v[k] for v in out.values()) for k in ("contaminated", "eligible", "too_short")}
    return {"n": n, "unit": "text units (tasks/common/ngrams.py)", **_counts(**total), "per_language": out}


def _counts(contaminated: int, eligible: int, too_short: int) -> dict:
    share = contaminated / eligible if eligible else None
    return {"share": share, "contaminated": contaminated, "eligible": eligible, "too_short": too_short}
