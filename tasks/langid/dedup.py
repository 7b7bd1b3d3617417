"""Exact and near-duplicate detection for one language's documents.

Exact: documents whose *normalised* text (lower case, punctuation and symbols removed,
white space collapsed) is equal form one cluster.

Near: MinHash over character 5-gram shingles of the normalised text, LSH banding, and a
check of each candidate pair's estimated Jaccard similarity; clusters are the connected
components of the checked pairs. The MinHash is a small vectorised numpy one (written
here) rather than ``datasketch``: datasketch updates one Python object per document and
per shingle (minutes for ~300k short documents on 2 cores, and not a dependency of
xlmflow), while here all shingles of a batch are hashed with a rolling hash over one
UTF-32 code point array and minimised with ``np.minimum.reduceat``, one permutation at
a time (memory ~ 8 bytes per shingle). Character shingles work for every script,
spaced or not.

Every cluster keeps one deterministic representative: its smallest ``doc_id``. Callers
pass documents sorted by ``doc_id`` so "first" means smallest.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xlmflow.storage.fingerprint import stable_hashes64


class DedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    exact: bool = Field(True, description="drop documents whose normalised text repeats one kept")
    near: bool = Field(True, description="drop near-duplicates (MinHash LSH over character shingles)")
    shingle_chars: int = Field(5, ge=1, description="characters per shingle of the near-duplicate check")
    num_perm: int = Field(64, ge=4, description="MinHash permutations per document (a multiple of bands)")
    bands: int = Field(8, ge=1, description="LSH bands; rows per band = num_perm / bands (threshold ~ (1/b)^(1/r))")
    jaccard: float = Field(0.8, ge=0, le=1, description="estimated Jaccard similarity a candidate pair must reach")
    seed: int = Field(1, description="seed of the MinHash permutations")

    @model_validator(mode="after")
    def _bands_divide(self):
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


def normalise(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(r"[\p{P}\p{S}]", " ").str.replace_all(r"\s+", " ").str.strip_chars()


def exact_duplicates(doc_id: pl.Series, key: pl.Series | pl.DataFrame) -> pl.DataFrame:
    """(doc_id, dup_of) of every document whose key (normalised text, or its hash in one or more columns)
    an earlier doc_id already has."""
    df = (key.to_frame() if isinstance(key, pl.Series) else key).with_columns(doc_id.alias("doc_id"))
    cols = [c for c in df.columns if c != "doc_id"]
    first = df.group_by(cols).agg(pl.col("doc_id").min().alias("dup_of"))
    dups = df.join(first, on=cols).filter(pl.col("doc_id") != pl.col("dup_of"))
    return dups.select("doc_id", "dup_of").sort("doc_id")


def text_keys(norm: pl.Series) -> pl.DataFrame:
    """A 128-bit key per normalised text (two independent 64-bit stable hashes): at 10^10 documents the
    chance that two different texts share one is ~10^-19, so exact dedup never drops a document for a
    collision (a 63-bit key would collide about once in 10^9 documents)."""
    arrow = norm.to_arrow()
    return pl.DataFrame(
        {"k0": stable_hashes64(arrow, 0), "k1": stable_hashes64(arrow, 0x5851F42D4C957F2D)},
        schema={"k0": pl.UInt64, "k1": pl.UInt64},
    )


MINHASH_CHARS = 1 << 20  # characters hashed at once: ~70 bytes of scratch per character


def minhash(norm: list[str] | pl.Series, p: DedupParams) -> np.ndarray:
    """(documents, num_perm) uint32 signatures; documents shorter than a shingle hash whole.

    Documents are hashed in groups of about :data:`MINHASH_CHARS` characters, so scratch memory is bounded
    by that, not by the batch's size in bytes."""
    texts = list(norm)
    ends = np.cumsum([len(t) for t in texts])
    cuts = np.unique(np.searchsorted(ends, np.arange(MINHASH_CHARS, ends[-1] if len(ends) else 0, MINHASH_CHARS)))
    if len(cuts) == 0:
        return _minhash(texts, p)
    bounds = [0, *[int(c) + 1 for c in cuts if c + 1 < len(texts)], len(texts)]
    return np.concatenate([_minhash(texts[a:b], p) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])


def _minhash(texts: list[str], p: DedupParams) -> np.ndarray:
    k = p.shingle_chars
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(texts) else np.zeros(0, np.int64)
    # rolling polynomial hash of every k-gram (wrapping uint64 arithmetic)
    span = max(len(cps) - k + 1, 0)
    h = np.zeros(span, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * np.uint64(1099511628211) + cps[j : j + span] + np.uint64(1)
    # k-grams of document d start at starts[d] .. starts[d]+len-k; short documents get one shingle
    n_sh = np.maximum(lengths - k + 1, 1)
    offs = np.arange(n_sh.sum()) - np.repeat(np.cumsum(n_sh) - n_sh, n_sh)
    pos = np.repeat(starts, n_sh) + offs
    seg = np.cumsum(n_sh) - n_sh
    sh = h[np.minimum(pos, span - 1)] if span else np.zeros(len(pos), dtype=np.uint64)
    short_docs = np.flatnonzero(lengths < k)  # few: one shingle each, the whole text's hash
    if len(short_docs):
        sh[seg[short_docs]] = np.array([hash_text(texts[d]) for d in short_docs], dtype=np.uint64)
    rng = np.random.default_rng(p.seed)
    a = rng.integers(1, 1 << 61, size=p.num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 61, size=p.num_perm, dtype=np.uint64)
    sig = np.empty((len(texts), p.num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for i in range(p.num_perm):
            v = ((sh * a[i] + b[i]) >> np.uint64(32)).astype(np.uint32)
            sig[:, i] = np.minimum.reduceat(v, seg) if len(texts) else v[:0]
    return sig


def hash_text(t: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")


def band_keys(sig: np.ndarray, p: DedupParams) -> np.ndarray:
    """(documents, bands) uint64: one hash per LSH band of each signature. Documents share a band's key
    when they share the band's rows (or, rarely, by a 64-bit collision, which the Jaccard check removes)."""
    rows = p.num_perm // p.bands
    keys = np.empty((sig.shape[0], p.bands), np.uint64)
    for band in range(p.bands):
        h = np.full(sig.shape[0], band, np.uint64)
        for col in sig[:, band * rows : (band + 1) * rows].T:
            h = _mix(h ^ col.astype(np.uint64))
        keys[:, band] = h
    return keys


def _mix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = h + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def near_duplicates(sig: np.ndarray, p: DedupParams) -> np.ndarray:
    """Cluster label per document (the smallest member index) from LSH candidates checked on Jaccard.

    The definition, on signatures in memory and in doc_id order; the stage computes the same clusters
    from hash buckets on disk (:mod:`.dedup_buckets`), a bucket at a time."""
    n = sig.shape[0]
    if n < 2:
        return np.arange(n)
    rows = p.num_perm // p.bands
    src, dst = [], []
    for band in range(p.bands):
        block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        del block
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rep = first[inverse.ravel()]  # np.unique's first index is the smallest member of each bucket
        pair = rep != np.arange(n)
        src.append(np.flatnonzero(pair))
        dst.append(rep[pair])
    i, j = np.concatenate(src), np.concatenate(dst)
    if len(i):
        i, j = np.unique(np.stack([i, j], axis=1), axis=0).T  # a pair found by several bands is checked once
        agree = np.zeros(len(i), bool)
        for k in range(0, len(i), 65536):  # candidates' signatures in slices: memory stays bounded
            agree[k : k + 65536] = (sig[i[k : k + 65536]] == sig[j[k : k + 65536]]).mean(axis=1) >= p.jaccard
        i, j = i[agree], j[agree]
    return components(n, i, j)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by edges ``i[k] - j[k]``: each node's label is the smallest
    node of its component (propagated until nothing changes)."""
    label = np.arange(n)
    while len(i):
        m = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    return label
