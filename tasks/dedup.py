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
from pydantic import BaseModel, ConfigDict, Field


class DedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    exact: bool = True
    near: bool = True
    shingle_chars: int = Field(5, ge=1)
    num_perm: int = Field(64, ge=4)
    bands: int = Field(8, ge=1, description="LSH bands; rows per band = num_perm / bands (threshold ~ (1/b)^(1/r))")
    jaccard: float = Field(0.8, description="estimated Jaccard similarity a candidate pair must reach")
    seed: int = 1


def normalise(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(r"[\p{P}\p{S}]", " ").str.replace_all(r"\s+", " ").str.strip_chars()


def exact_duplicates(doc_id: pl.Series, norm: pl.Series) -> pl.DataFrame:
    """(doc_id, dup_of) of every document whose normalised text an earlier doc_id already has."""
    df = pl.DataFrame({"doc_id": doc_id, "norm": norm})
    first = df.group_by("norm").agg(pl.col("doc_id").min().alias("dup_of"))
    return (
        df.join(first, on="norm").filter(pl.col("doc_id") != pl.col("dup_of")).select("doc_id", "dup_of").sort("doc_id")
    )


def minhash(norm: list[str] | pl.Series, p: DedupParams) -> np.ndarray:
    """(documents, num_perm) uint32 signatures; documents shorter than a shingle hash whole."""
    texts = list(norm)
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


def near_duplicates(sig: np.ndarray, p: DedupParams) -> np.ndarray:
    """Cluster label per document (the smallest member index) from LSH candidates checked on Jaccard."""
    n = sig.shape[0]
    label = np.arange(n)
    if n < 2:
        return label
    rows = p.num_perm // p.bands
    src, dst = [], []
    for band in range(p.bands):
        block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rep = first[inverse.ravel()]  # np.unique's first index is the smallest member of each bucket
        pair = rep != np.arange(n)
        src.append(np.flatnonzero(pair))
        dst.append(rep[pair])
    i, j = np.concatenate(src), np.concatenate(dst)
    if len(i):
        agree = (sig[i] == sig[j]).mean(axis=1) >= p.jaccard
        i, j = i[agree], j[agree]
    while len(i):  # connected components: propagate the smallest label until nothing changes
        m = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    return label
