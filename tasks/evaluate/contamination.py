"""Contamination of a parallel set: its eval segments sharing an n-token n-gram with the train shards, in the
model's tokens (:class:`~xlmflow.tasks.common.ngrams.NgramIndex`, shared with the langid stage's eval holdout),
out of the segments of at least n tokens."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from xlmflow.storage import Location, read_batches
from xlmflow.storage import shards as shard_store
from xlmflow.tasks.common.ngrams import NgramIndex


@lru_cache(maxsize=2)
def train_ngrams(shard_uri: str, fingerprint: str, n: int) -> NgramIndex:
    """Every n-gram of the train shards (within documents), once per process and shard stage."""
    index = NgramIndex(n)
    for s in shard_store.list_shards(shard_uri, "train"):
        shard_store.verify(s)
        for batch in read_batches(Location(s.uri), ["input_ids"], 4096):
            col = batch.column(0)
            flat = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
            index.add(flat, col.offsets.to_numpy()[:-1].astype(np.int64) - col.offsets[0].as_py())
    index.freeze()
    return index


def count_contamination(tok, shard_uri: str, fingerprint: str, texts: dict, n: int) -> dict:
    """Eval segments sharing an n-token n-gram with the train shards, per language and for the set.

    The share's denominator is the *eligible* segments, those of at least n tokens: a shorter one cannot
    share an n-gram, so counting it would dilute the share; those are counted apart (``too_short``).
    Empty segments are neither. ``share`` is None where no segment is eligible."""
    index = train_ngrams(shard_uri, fingerprint, n)
    out: dict[str, dict] = {}
    for lang, column in texts.items():
        segs = [t for t in column if t]
        ids = [e.ids for e in tok.encode_batch(segs, add_special_tokens=False)]
        eligible = [np.asarray(i, dtype=np.int64) for i in ids if len(i) >= n]
        out[lang] = _counts(int(index.hits(eligible).sum()), len(eligible), len(segs) - len(eligible))
    total = {k: sum(v[k] for v in out.values()) for k in ("contaminated", "eligible", "too_short")}
    return {"n": n, **_counts(**total), "per_language": out}


def _counts(contaminated: int, eligible: int, too_short: int) -> dict:
    share = contaminated / eligible if eligible else None
    return {"share": share, "contaminated": contaminated, "eligible": eligible, "too_short": too_short}
