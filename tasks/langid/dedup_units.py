"""The langid stage's dedup and clean units: one language of one increment each (:mod:`.increments`).

``dedup/lang=<xx>/inc=NNNN/`` holds the increment's rejected documents (with reason and ``dup_of``) and the index
of the ones it kept (:data:`INDEX`, :mod:`.dedup_buckets`), which later increments are deduplicated against;
``clean/lang=<xx>/inc=NNNN/`` the kept documents themselves, the contract for later stages.
"""

from __future__ import annotations

import tempfile
from typing import Iterator

import polars as pl

from xlmflow.storage import Aside, Location, PartWriter, file_sha256, read_batches, read_table
from xlmflow.tasks.common.runtime import Ref, Unit, ensure
from xlmflow.tasks.langid import dedup, dedup_buckets
from xlmflow.tasks.langid.dedup import DedupParams
from xlmflow.tasks.langid.schemas import KEPT_SCHEMA, REJECTED_SCHEMA

INDEX = "index.parquet"  # a dedup unit's index of the documents it kept (dedup_buckets)


def dedup_unit(unit: Unit) -> Ref:
    """Exact + near dedup of one language's documents of one increment, among themselves and against the kept
    documents of the earlier increments (their indexes), and the ``min_lang_docs`` rule; writes the rejected
    documents and the index of the kept ones."""
    p = DedupParams(**unit.params["dedup"])
    lang = unit.params["lang"]
    files = [Location(i.uri) for _, i in unit.each("kept")]
    prior = [Location(i.uri) for _, i in unit.each("index")]

    def build(aside: Aside) -> dict:
        check_inputs(unit, "kept")
        before = sum(read_table(f, ["doc_id"]).num_rows for f in prior)  # kept by earlier increments
        with tempfile.TemporaryDirectory(prefix="xlmflow-dedup-") as scratch_dir:
            n, dropped, scratch = dedup_buckets.find_duplicates(
                _normalised(files), p, scratch_dir, unit.options.get("expected_docs", 0), prior
            )
            left = n - dropped.height
            if 0 < before + left < unit.params["min_lang_docs"]:  # the few documents left: all rejected as rare
                drop = dropped["doc_id"].implode()
                rest = pl.concat(
                    pl.from_arrow(b).filter(~pl.col("doc_id").is_in(drop))
                    for f in files
                    for b in read_batches(f, ["doc_id"])
                ).select("doc_id", pl.lit(None, pl.String).alias("dup_of"), pl.lit("rare_language").alias("reason"))
                dropped, left = pl.concat([dropped, rest]).sort("doc_id"), 0
            dedup_buckets.write_index(scratch, dropped["doc_id"], aside.path(INDEX))
        if n == 0:
            return {"dedup_kept": {lang: 0}, "rejected": {}}
        writer = PartWriter(lambda n: aside.path("rejected.parquet"), REJECTED_SCHEMA)
        for f in files:
            for b in read_batches(f):
                hit = pl.from_arrow(b).join(dropped, on="doc_id", how="inner", maintain_order="left")
                writer.write(hit.select(REJECTED_SCHEMA.names).to_arrow())
        writer.close()
        counts = dict(dropped.group_by("reason").len().rows())
        return {"dedup_kept": {lang: left}, "rejected": {r: {lang: n} for r, n in sorted(counts.items())}}

    return ensure(unit, build)


def check_inputs(unit: Unit, role: str) -> None:
    """Refuse to build from input files whose bytes are not the ones planned: an earlier increment's unit is
    re-planned from the ledger, and its inputs may have been rewritten since (a changed filter)."""
    for name, i in unit.each(role):
        loc = Location(i.uri)
        if not loc.exists() or file_sha256(loc.fs, loc.path)[0] != i.fingerprint:
            raise ValueError(
                f"{unit.stage}/{unit.name}: its input {name} is gone or changed since increment "
                f"{unit.params.get('increment', 1)} was decided; run without --incremental (a full rebuild)"
            )


def _normalised(files: list[Location]) -> Iterator[tuple[pl.Series, pl.Series]]:
    """(doc_id, normalised text) batches of a language's kept documents: all dedup reads of the texts."""
    for f in files:
        for b in read_batches(f, ["doc_id", "text"]):
            text = pl.from_arrow(b.column(1)).rename("text").to_frame()
            yield pl.from_arrow(b.column(0)).rename("doc_id"), text.select(dedup.normalise(pl.col("text")))["text"]


def clean_unit(unit: Unit) -> Ref:
    """The clean partition of one language: the filter's kept documents minus dedup's rejected ones."""
    dedup_loc = Location(unit.input("dedup").uri)
    drop = pl.from_arrow(read_table(dedup_loc.child("rejected.parquet"), ["doc_id"]))["doc_id"].implode()

    def build(aside: Aside) -> dict:
        check_inputs(unit, "kept")
        writer, n = PartWriter(aside.path, KEPT_SCHEMA), 0
        for _, kept in unit.each("kept"):
            for b in read_batches(Location(kept.uri)):
                keep = pl.from_arrow(b).filter(~pl.col("doc_id").is_in(drop))
                writer.write(keep.to_arrow())
                n += keep.height
        writer.close()
        return {"clean": {unit.params["lang"]: n}}

    return ensure(unit, build)
