"""The shard stage's split and cuts: which documents are validation documents, and which rows each shard reads.

A document is in the validation split when a seeded 63-bit hash of its id falls below a per-language
threshold (:func:`valid_threshold`), so its split depends only on its id, the seed and the size of its
language. A language's rows are then cut into shards of ``shard_docs`` documents of one split each.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from xlmflow.storage import Location, read_batches, stable_hashes
from xlmflow.storage.fingerprint import HASH_BITS
from xlmflow.tasks.shard.params import ShardParams


def valid_threshold(hashes_below: np.ndarray, n_docs: int, params: ShardParams) -> int:
    """Hashes below the returned value are validation documents.

    ``hashes_below`` must hold every hash under the fraction's threshold plus the
    ``min_valid_docs`` smallest (what :func:`split_language` keeps).
    """
    by_fraction = int(params.valid_fraction * (1 << HASH_BITS))
    n_fraction = int((hashes_below < by_fraction).sum())
    n_valid = min(max(n_fraction, params.min_valid_docs), n_docs // 2)
    if n_valid == n_fraction:
        return by_fraction
    if n_valid == 0:
        return 0
    return int(np.sort(hashes_below)[n_valid - 1]) + 1


def split_language(langid_loc: Location, paths: list[str], n_docs: int, params: ShardParams) -> tuple[int, np.ndarray]:
    """(threshold, sorted positions of the validation documents within the language's row sequence).

    Streams the ``doc_id`` column; keeps only candidates (hashes under the fraction's
    threshold, and the running ``min_valid_docs`` smallest), so memory follows the
    validation set, not the corpus.
    """
    by_fraction = int(params.valid_fraction * (1 << HASH_BITS))
    keep_h, keep_pos = np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = min(params.min_valid_docs, n_docs // 2)
    row = 0
    for path in paths:
        for batch in read_batches(langid_loc.child(path), ["doc_id"], 1 << 16):
            h = stable_hashes(batch.column(0), params.seed) if batch.num_rows else np.zeros(0, np.int64)
            check_ids(batch.column(0), langid_loc.child(path), row)
            keep_h = np.concatenate([keep_h, h])
            keep_pos = np.concatenate([keep_pos, np.arange(row, row + len(h), dtype=np.int64)])
            cutoff = by_fraction
            if k and len(keep_h) > k:
                cutoff = max(cutoff, int(np.partition(keep_h, k - 1)[k - 1]) + 1)
            elif k:
                cutoff = 1 << HASH_BITS
            mask = keep_h < cutoff
            keep_h, keep_pos = keep_h[mask], keep_pos[mask]
            row += len(h)
    threshold = valid_threshold(keep_h, row, params)
    return threshold, np.sort(keep_pos[keep_h < threshold])


def positions_below(langid_loc: Location, paths: list[str], threshold: int, seed: int) -> np.ndarray:
    """Positions (in the files' row sequence) of the documents whose hash is below ``threshold``: a later
    increment of a language is split by the threshold its first increment set (the same hash rule)."""
    found, row = [np.zeros(0, np.int64)], 0
    for path in paths:
        for batch in read_batches(langid_loc.child(path), ["doc_id"], 1 << 16):
            check_ids(batch.column(0), langid_loc.child(path), row)
            h = stable_hashes(batch.column(0), seed) if batch.num_rows else np.zeros(0, np.int64)
            found.append(np.flatnonzero(h < threshold) + row)
            row += len(h)
    return np.concatenate(found).astype(np.int64)


def check_ids(ids: pa.Array, loc: Location, first_row: int) -> None:
    if ids.null_count:
        bad = first_row + int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{loc}: row {bad} has no doc_id; the langid stage must give every document an id")


def train_cuts(valid_pos: np.ndarray, n_rows: int, per_shard: int) -> list[tuple[int, int, int]]:
    """(first row, end row, documents) of each train shard: ``per_shard`` train documents each."""
    n_train = n_rows - len(valid_pos)
    # train document j sits at row j + (number of validation rows before it)
    before = valid_pos - np.arange(len(valid_pos))
    starts = [j + int(np.searchsorted(before, j, side="right")) for j in range(0, n_train, per_shard)]
    return [
        (lo, starts[i + 1] if i + 1 < len(starts) else n_rows, min(per_shard, n_train - i * per_shard))
        for i, lo in enumerate(starts)
    ]


def valid_cuts(valid_pos: np.ndarray, per_shard: int) -> list[tuple[int, int, int]]:
    return [
        (
            int(valid_pos[i]),
            int(valid_pos[min(i + per_shard, len(valid_pos)) - 1]) + 1,
            min(per_shard, len(valid_pos) - i),
        )
        for i in range(0, len(valid_pos), per_shard)
    ]


def file_ranges(files, starts: np.ndarray, lo: int, hi: int) -> list[list]:
    """Rows [lo, hi) of the language's row sequence as [path, first row, end row] per file."""
    out = []
    for f, s, e in zip(files, starts[:-1], starts[1:]):
        a, b = max(lo, int(s)), min(hi, int(e))
        if a < b:
            out.append([f.path, a - int(s), b - int(s)])
    return out
