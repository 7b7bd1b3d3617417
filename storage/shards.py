"""Token shards: where the shards stage puts them, and a reader that streams them for training.

Layout (one committed unit folder per shard, so each shard is cached and rebuilt alone)::

    shard/_manifest.json             every shard file with bytes, sha256, rows; totals in stats
    shard/shards.json                the index: per shard split, lang, rows, tokens, bytes, sha256, increment;
                                     the increments (number, date, inputs, tokens) and untagged documents
    shard/<split>/<lang>-NNNNN/<split>-<lang>-NNNNN.parquet
    shard/pairs/<set>/pairs-<set>.parquet   a parallel set's train part, tokenised (tasks/shard/pairs.py)

The split is the folder group so ``data_files={"train": "shard/train/*/*.parquet"}`` is
one glob per split; the language leads the shard name so one language is a glob too;
file names repeat split and language so shards copied elsewhere stay self-describing.

:func:`iter_batches` verifies each file's size and sha256 against the stage manifest
*before* reading it, so a corrupt or truncated shard is an error naming the file, never
silently wrong tokens. :func:`for_rank` gives every rank of a distributed job a
deterministic, disjoint share of the shards, balanced by bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .fingerprint import file_sha256
from .layout import Location
from .manifest import ManifestError, read_manifest

STAGE = "shard"
SPLITS = ("train", "valid")
PAIRS = "pairs"  # the group of the tokenised translation pairs
INDEX = "shards.json"
BATCH_ROWS = 4096


def shard_name(lang: str, number: int) -> str:
    """The unit folder of one shard inside its split group: ``<lang>-NNNNN``."""
    return f"{lang}-{number:05d}"


def shard_file(split: str, lang: str, number: int) -> str:
    return f"{split}-{shard_name(lang, number)}.parquet"


@dataclass(frozen=True)
class Shard:
    """One committed shard file, as the stage manifest records it."""

    path: str  # relative to the shards stage folder
    uri: str
    split: str
    lang: str
    rows: int
    bytes: int
    sha256: str


def list_shards(stage: Location | str, split: str | None = "train", langs: list[str] | None = None) -> list[Shard]:
    """The committed shards of ``split`` (all splits when None), optionally only some languages, by path."""
    loc = stage if isinstance(stage, Location) else Location.of(stage)
    m = read_manifest(loc)
    if m is None:
        raise ManifestError(f"{loc} has no committed shards; run the shard stage first (xlmflow shard --run-dir ...)")
    if m.stage != STAGE:
        raise ManifestError(f"{loc}: manifest is for stage {m.stage!r}, expected {STAGE!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    found = []
    for f in m.files:
        parts = f.path.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS or not f.path.endswith(".parquet"):
            continue
        lang = parts[1].rsplit("-", 1)[0]
        if (split is None or parts[0] == split) and (langs is None or lang in langs):
            found.append(
                Shard(
                    path=f.path,
                    uri=loc.child(f.path).uri,
                    split=parts[0],
                    lang=lang,
                    rows=f.rows or 0,
                    bytes=f.bytes,
                    sha256=f.sha256,
                )
            )
    return found


def list_pairs(stage: Location | str) -> list[Shard]:
    """The committed translation-pair files, by path; ``lang`` holds the parallel set's name."""
    loc = stage if isinstance(stage, Location) else Location.of(stage)
    m = read_manifest(loc)
    if m is None:
        raise ManifestError(f"{loc} has no committed shards; run the shard stage first (xlmflow shard --run-dir ...)")
    found = []
    for f in m.files:
        parts = f.path.split("/")
        if len(parts) == 3 and parts[0] == PAIRS and f.path.endswith(".parquet"):
            found.append(Shard(f.path, loc.child(f.path).uri, PAIRS, parts[1], f.rows or 0, f.bytes, f.sha256))
    return sorted(found, key=lambda s: s.path)


def usable(table: pa.Table, a: str, b: str) -> np.ndarray:
    """Rows of a pairs file whose ``a`` and ``b`` sides make a translation example: both ``ok_`` (not empty, in
    their column's language), and not the same text (``h_`` hashes differ)."""
    ok = np.asarray(table[f"ok_{a}"]) & np.asarray(table[f"ok_{b}"])
    return ok & (np.asarray(table[f"h_{a}"]) != np.asarray(table[f"h_{b}"]))


def for_rank(shards: list[Shard], rank: int, world_size: int) -> list[Shard]:
    """Rank ``rank``'s share: a disjoint partition of ``shards`` over ``world_size`` ranks.

    Greedy by bytes (largest first, onto the least-loaded rank, ties to the lower rank)
    so ranks get similar amounts of tokens; depends only on the shard list, so every
    rank computes the same partition without talking to the others.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if len(shards) < world_size:
        raise ValueError(
            f"{len(shards)} shards cannot feed {world_size} ranks; make smaller shards "
            f"(shard stage: shard_docs) or use fewer ranks"
        )
    load = [0] * world_size
    mine = []
    for s in sorted(shards, key=lambda s: (-s.bytes, s.path)):
        r = min(range(world_size), key=lambda i: (load[i], i))
        load[r] += s.bytes
        if r == rank:
            mine.append(s)
    return sorted(mine, key=lambda s: s.path)


def verify(shard: Shard) -> None:
    """Raise :class:`ManifestError` naming the file unless its size and sha256 match the manifest."""
    loc = Location(shard.uri)
    try:
        size = loc.fs.size(loc.path)
    except FileNotFoundError:
        raise ManifestError(f"{shard.uri}: shard is missing; rerun the shard stage to rebuild it") from None
    if size != shard.bytes:
        raise ManifestError(
            f"{shard.uri}: {size} bytes, the shards manifest says {shard.bytes}; the shard is "
            f"truncated or was changed: rerun the shard stage to rebuild it"
        )
    if file_sha256(loc.fs, loc.path)[0] != shard.sha256:
        raise ManifestError(
            f"{shard.uri}: sha256 differs from the shards manifest; the shard is corrupt: "
            f"rerun the shard stage to rebuild it"
        )


def iter_batches(
    stage: Location | str,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    langs: list[str] | None = None,
    columns: list[str] | None = None,
    batch_rows: int = BATCH_ROWS,
    seed: int | None = None,
    check: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of this rank's shards, each shard verified before it is read.

    ``seed`` shuffles the order of the rank's shards (the same seed gives the same
    order, e.g. the epoch number); rows inside a shard keep their committed order.
    """
    shards = for_rank(list_shards(stage, split, langs), rank, world_size)
    if seed is not None:
        random.Random(seed).shuffle(shards)
    for shard in shards:
        if check:
            verify(shard)
        loc = Location(shard.uri)
        with loc.open("rb") as f:
            yield from pq.ParquetFile(f, pre_buffer=False).iter_batches(batch_size=batch_rows, columns=columns)


def data_files(
    stage: Location | str, split: str = "train", langs: list[str] | None = None, check: bool = True
) -> list[str]:
    """Verified shard URIs of a split, for ``datasets.load_dataset("parquet", data_files=...)`` or polars."""
    shards = list_shards(stage, split, langs)
    if check:
        for s in shards:
            verify(s)
    return [s.uri for s in shards]
