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

**The index** (``index.parquet`` of a dedup unit): the kept documents' ``doc_id``, text key (``k0``, ``k1``) and,
with near dedup, band keys (``b0``...) and signature (``sig``). An incremental run deduplicates a new
increment's documents among themselves as above, then against the indexes of the earlier increments
(:func:`against_prior`): a new document whose key, or a band key and the Jaccard check, matches a kept one is
dropped (``dup_of`` the kept one), so every document kept before stays kept. The index holds what the
settings made (``num_perm``, ``bands``, ``seed``, shingles): other settings need a full rebuild.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from xlmflow.storage import Location, read_batches
from xlmflow.tasks.langid.dedup import DedupParams, band_keys, components, minhash, text_keys

BUCKET_DOCS = 100_000  # documents per bucket: ~100 MB of scratch memory while one is deduplicated
CHECK_PAIRS = 65536  # candidate pairs checked at once (2 x 256 bytes each)
EXACT = pa.schema([("doc_id", pa.string()), ("k0", pa.uint64()), ("k1", pa.uint64())])
BAND = pa.schema([("doc_id", pa.string()), ("row", pa.int64()), ("key", pa.uint64())])


def index_schema(p: DedupParams) -> pa.Schema:
    """The columns of a dedup unit's ``index.parquet`` (see above)."""
    fields = [("doc_id", pa.string()), ("k0", pa.uint64()), ("k1", pa.uint64())]
    if p.near:
        fields += [(f"b{k}", pa.uint64()) for k in range(p.bands)]
        fields += [("sig", pa.list_(pa.uint32(), p.num_perm))]
    return pa.schema(fields)


def bucket_count(expected_docs: int) -> int:
    return max(1, math.ceil(expected_docs / BUCKET_DOCS))


class Scratch:
    """The bucket files of one language's dedup in ``folder`` (local, deleted by the caller)."""

    def __init__(self, folder: str, p: DedupParams, buckets: int):
        self.folder, self.p, self.buckets, self.rows = folder, p, buckets, 0
        self.exact = [self._writer(f"exact-{b}", EXACT) for b in range(buckets)]
        self.bands = [[self._writer(f"band{k}-{b}", BAND) for b in range(buckets)] for k in range(p.bands)]
        self.signatures = open(f"{folder}/signatures.u32", "wb")
        self.index_schema = index_schema(p)
        self.index = self._writer("index", self.index_schema)

    def _writer(self, name: str, schema: pa.Schema):
        return ipc.new_file(f"{self.folder}/{name}.arrow", schema)

    def add(self, doc_id: pl.Series, norm: pl.Series) -> None:
        """One batch: its keys into the exact buckets; with near dedup, its band keys and signatures."""
        keys = text_keys(norm)
        frame = keys.with_columns(doc_id.alias("doc_id")).select("doc_id", "k0", "k1")
        self._scatter(self.exact, frame, keys["k0"].to_numpy(), EXACT)
        index = frame
        if self.p.near:
            sig = minhash(norm, self.p)
            self.signatures.write(np.ascontiguousarray(sig).tobytes())
            rows = np.arange(self.rows, self.rows + len(doc_id), dtype=np.int64)
            bands = band_keys(sig, self.p)
            for k, key in enumerate(bands.T):
                part = pl.DataFrame({"doc_id": doc_id, "row": rows, "key": key})
                self._scatter(self.bands[k], part, key, BAND)
            index = index.with_columns(
                *(pl.Series(f"b{k}", key, pl.UInt64) for k, key in enumerate(bands.T)), pl.Series("sig", sig)
            )
        self.index.write_table(index.to_arrow().cast(self.index_schema))
        self.rows += len(doc_id)

    def _scatter(self, writers, frame: pl.DataFrame, key: np.ndarray, schema: pa.Schema) -> None:
        if self.buckets == 1:
            writers[0].write_table(frame.to_arrow().cast(schema))
            return
        which = (key % np.uint64(self.buckets)).astype(np.int64)
        for (b,), part in frame.with_columns(pl.Series("_b", which)).partition_by("_b", as_dict=True).items():
            writers[b].write_table(part.drop("_b").to_arrow().cast(schema))

    def close(self) -> None:
        for w in [*self.exact, *(w for band in self.bands for w in band), self.index]:
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


def find_duplicates(
    batches: Iterable[tuple[pl.Series, pl.Series]],
    p: DedupParams,
    folder: str,
    expected: int,
    prior: Iterable[Location] = (),
):
    """(documents seen, dropped, scratch) for ``batches`` of (doc_id, normalised text): ``dropped`` has ``doc_id``,
    ``dup_of`` (the cluster's smallest doc_id, or the kept document of an earlier increment) and ``reason``
    (``duplicate`` or ``near_duplicate``). ``prior``: the index files of earlier increments; the scratch holds
    the index rows of every document seen (:func:`write_index` keeps those not dropped)."""
    n, dropped, scratch = _within(batches, p, folder, expected)
    prior = list(prior)
    if prior and n:
        old = against_prior(scratch, dropped["doc_id"], prior)
        dropped = pl.concat([dropped, old]).sort("doc_id")
    return n, dropped, scratch


def _within(batches, p: DedupParams, folder: str, expected: int):
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
    return scratch.rows, pl.concat(drops).sort("doc_id"), scratch


def against_prior(scratch: Scratch, dropped: pl.Series, prior: list[Location]) -> pl.DataFrame:
    """The new documents (not already ``dropped``) that repeat a document kept by an earlier increment, read from
    those increments' index files a batch at a time: an equal text key (``duplicate``), else a shared band key
    whose signatures agree on ``jaccard`` (``near_duplicate``); ``dup_of`` is the smallest such kept doc_id."""
    p = scratch.p
    new = scratch.read("index").filter(~pl.col("doc_id").is_in(dropped.implode()))
    found = [pl.DataFrame(schema={"doc_id": pl.String, "dup_of": pl.String, "reason": pl.String, "rank": pl.Int8})]
    for loc in prior:
        for batch in read_batches(loc):
            old = pl.from_arrow(batch)
            exact = new.select("doc_id", "k0", "k1").join(
                old.select("k0", "k1", pl.col("doc_id").alias("dup_of")), on=["k0", "k1"]
            )
            found.append(
                exact.select("doc_id", "dup_of", pl.lit("duplicate").alias("reason"), pl.lit(0, pl.Int8).alias("rank"))
            )
            if not p.near:
                continue
            for k in range(p.bands):
                cand = new.select("doc_id", f"b{k}", "sig").join(
                    old.select(f"b{k}", pl.col("doc_id").alias("dup_of"), pl.col("sig").alias("old_sig")), on=f"b{k}"
                )
                if cand.is_empty():
                    continue
                agree = (cand["sig"].to_numpy() == cand["old_sig"].to_numpy()).mean(axis=1) >= p.jaccard
                near = cand.filter(pl.Series(agree)).select(
                    "doc_id", "dup_of", pl.lit("near_duplicate").alias("reason"), pl.lit(1, pl.Int8).alias("rank")
                )
                found.append(near)
    hits = pl.concat(found)
    return (
        hits.sort("doc_id", "rank", "dup_of")
        .group_by("doc_id", maintain_order=True)
        .first()
        .select("doc_id", "dup_of", "reason")
    )


def write_index(scratch: Scratch, dropped: pl.Series, out: Location) -> int:
    """Write the index rows of the documents kept (not in ``dropped``) to ``out``; returns how many."""
    from xlmflow.storage import FileWriter

    writer = FileWriter(out, index_schema(scratch.p))
    n = 0
    with ipc.open_file(f"{scratch.folder}/index.arrow") as f:
        for i in range(f.num_record_batches):
            kept = pl.from_arrow(f.get_batch(i)).filter(~pl.col("doc_id").is_in(dropped.implode()))
            writer.write(kept.to_arrow().cast(writer.schema))
            n += kept.height
    writer.close()
    return n


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
