"""Dedup of one language in bounded memory: hash buckets on local scratch, one bucket in memory at a time.

:mod:`.dedup` defines the clusters (exact: equal normalised text; near: LSH candidates checked on
Jaccard, connected, each kept as its smallest ``doc_id``). Held in memory for a whole language, that is
~1 KB per document (signatures, ids, the LSH sort). Here, as batches stream in, each document goes

* to one **exact bucket** (by its 128-bit text key): ``doc_id, k0, k1``;
* to one **band bucket** per LSH band (by that band's key): ``doc_id, row, key``;
* its signature to a file of fixed-size rows, read back only for candidate pairs.

Equal keys always share a bucket, so each bucket is deduplicated alone: exact duplicates from the exact
buckets, then near-duplicate candidates from each band bucket (exact duplicates left out, as in
:func:`.dedup.near_duplicates`), checked on Jaccard against the stored signatures. The connected components
of the checked pairs involve only documents in some pair. Memory: one bucket (``docs / buckets``
documents), the exact duplicates' ids and the near-duplicate pairs.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from xlmflow.tasks.langid.dedup import DedupParams, band_keys, components, minhash, text_keys

BUCKET_DOCS = 100_000  # documents per bucket: ~100 MB of scratch memory while one is deduplicated
CHECK_PAIRS = 65536  # candidate pairs checked at once (2 x 256 bytes each)
EXACT = pa.schema([("doc_id", pa.string()), ("k0", pa.uint64()), ("k1", pa.uint64())])
BAND = pa.schema([("doc_id", pa.string()), ("row", pa.int64()), ("key", pa.uint64())])


def bucket_count(expected_docs: int) -> int:
    return max(1, math.ceil(expected_docs / BUCKET_DOCS))


class Scratch:
    """The bucket files of one language's dedup in ``folder`` (local, deleted by the caller)."""

    def __init__(self, folder: str, p: DedupParams, buckets: int):
        self.folder, self.p, self.buckets, self.rows = folder, p, buckets, 0
        self.exact = [self._writer(f"exact-{b}", EXACT) for b in range(buckets)]
        self.bands = [[self._writer(f"band{k}-{b}", BAND) for b in range(buckets)] for k in range(p.bands)]
        self.signatures = open(f"{folder}/signatures.u32", "wb")

    def _writer(self, name: str, schema: pa.Schema):
        return ipc.new_file(f"{self.folder}/{name}.arrow", schema)

    def add(self, doc_id: pl.Series, norm: pl.Series) -> None:
        """One batch: its keys into the exact buckets; with near dedup, its band keys and signatures."""
        keys = text_keys(norm)
        frame = keys.with_columns(doc_id.alias("doc_id")).select("doc_id", "k0", "k1")
        self._scatter(self.exact, frame, keys["k0"].to_numpy(), EXACT)
        if self.p.near:
            sig = minhash(norm, self.p)
            self.signatures.write(np.ascontiguousarray(sig).tobytes())
            rows = np.arange(self.rows, self.rows + len(doc_id), dtype=np.int64)
            for k, key in enumerate(band_keys(sig, self.p).T):
                part = pl.DataFrame({"doc_id": doc_id, "row": rows, "key": key})
                self._scatter(self.bands[k], part, key, BAND)
        self.rows += len(doc_id)

    def _scatter(self, writers, frame: pl.DataFrame, key: np.ndarray, schema: pa.Schema) -> None:
        if self.buckets == 1:
            writers[0].write_table(frame.to_arrow().cast(schema))
            return
        which = (key % np.uint64(self.buckets)).astype(np.int64)
        for (b,), part in frame.with_columns(pl.Series("_b", which)).partition_by("_b", as_dict=True).items():
            writers[b].write_table(part.drop("_b").to_arrow().cast(schema))

    def close(self) -> None:
        for w in [*self.exact, *(w for band in self.bands for w in band)]:
            w.close()
        self.signatures.close()

    def read(self, name: str) -> pl.DataFrame:
        with ipc.open_file(f"{self.folder}/{name}.arrow") as f:
            return pl.from_arrow(f.read_all())

    def signature_rows(self, rows: np.ndarray) -> np.ndarray:
        """The signatures of ``rows``, read row by row (candidates are few). Not a memory map: its pages, and
        the cached pages the kernel maps around each fault, count as resident and pile up to the whole file."""
        width = self.p.num_perm * 4
        out = np.empty((len(rows), self.p.num_perm), np.uint32)
        with open(f"{self.folder}/signatures.u32", "rb", buffering=0) as f:
            for k, row in enumerate(rows.tolist()):
                out[k] = np.frombuffer(os.pread(f.fileno(), width, row * width), np.uint32)
        return out


def find_duplicates(batches: Iterable[tuple[pl.Series, pl.Series]], p: DedupParams, folder: str, expected: int):
    """(documents seen, dropped) for ``batches`` of (doc_id, normalised text): ``dropped`` has ``doc_id``,
    ``dup_of`` (the cluster's smallest doc_id) and ``reason`` (``duplicate`` or ``near_duplicate``)."""
    scratch = Scratch(folder, p, bucket_count(expected))
    for doc_id, norm in batches:
        scratch.add(doc_id, norm)
    scratch.close()
    empty = pl.DataFrame(schema={"doc_id": pl.String, "dup_of": pl.String, "reason": pl.String})
    drops = [empty]
    if p.exact:
        for b in range(scratch.buckets):
            df = scratch.read(f"exact-{b}")
            first = df.group_by("k0", "k1").agg(pl.col("doc_id").min().alias("dup_of"))
            dups = df.join(first, on=["k0", "k1"]).filter(pl.col("doc_id") != pl.col("dup_of"))
            drops.append(dups.select("doc_id", "dup_of", pl.lit("duplicate").alias("reason")))
    exact = pl.concat(drops)
    if p.near and scratch.rows - exact.height > 1:
        drops.append(_near(scratch, exact["doc_id"]))
    return scratch.rows, pl.concat(drops).sort("doc_id")


def _near(scratch: Scratch, dead: pl.Series) -> pl.DataFrame:
    """Near duplicates among the documents that are not exact duplicates (``dead``)."""
    p, pairs = scratch.p, []
    for k in range(p.bands):
        for b in range(scratch.buckets):
            df = scratch.read(f"band{k}-{b}").filter(~pl.col("doc_id").is_in(dead.implode()))
            rep = (
                df.sort("doc_id")
                .group_by("key", maintain_order=True)
                .agg(pl.col("doc_id").first().alias("rep_id"), pl.col("row").first().alias("rep_row"))
            )
            hits = df.join(rep, on="key").filter(pl.col("doc_id") != pl.col("rep_id"))
            pairs.append(hits.select("doc_id", "row", "rep_id", "rep_row"))
    cand = pl.concat(pairs).unique(["row", "rep_row"]).sort("row", "rep_row")
    if cand.is_empty():
        return pl.DataFrame(schema={"doc_id": pl.String, "dup_of": pl.String, "reason": pl.String})
    i, j = cand["row"].to_numpy(), cand["rep_row"].to_numpy()
    agree = np.zeros(len(i), bool)
    for s in range(0, len(i), CHECK_PAIRS):  # a slice at a time: each maps (and pages in) its rows only
        a, c = scratch.signature_rows(i[s : s + CHECK_PAIRS]), scratch.signature_rows(j[s : s + CHECK_PAIRS])
        agree[s : s + CHECK_PAIRS] = (a == c).mean(axis=1) >= p.jaccard
    checked = cand.filter(pl.Series(agree))
    # connected components over the documents in some checked pair, labelled by their smallest doc_id
    nodes = pl.concat([checked["doc_id"], checked["rep_id"]]).unique().sort()
    index = {"doc_id": nodes, "n": pl.Series(np.arange(len(nodes)))}
    rank = pl.DataFrame(index)
    ii = checked.join(rank, on="doc_id", maintain_order="left")["n"].to_numpy()
    jj = checked.select(pl.col("rep_id").alias("doc_id")).join(rank, on="doc_id", maintain_order="left")["n"].to_numpy()
    label = components(len(nodes), ii, jj)
    dup = np.flatnonzero(label != np.arange(len(nodes)))
    return pl.DataFrame(
        {
            "doc_id": nodes.gather(dup),
            "dup_of": nodes.gather(label[dup]),
            "reason": pl.Series(["near_duplicate"] * len(dup), dtype=pl.String),
        }
    )
