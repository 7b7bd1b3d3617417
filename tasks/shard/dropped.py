"""``drop_removed``: the documents of input files gone from the sources, left out of the shards.

An incremental run keeps the documents it kept (they are in committed models), and the langid ledger lists the
input files gone from the sources (``removed``). Told to, the shard stage leaves their documents out: a shard
whose rows hold some gets a ``drop`` parameter (the names of those inputs), so it is a new unit, written again
without them; every other shard keeps its fingerprint and its bytes. A file that comes back is sharded again.
"""

from __future__ import annotations

import numpy as np

from xlmflow.storage import Location, read_batches
from xlmflow.storage.increments import read_ledger
from xlmflow.tasks.common.inputs import input_names


def removed_by_increment(langid_loc: Location, drop_removed: bool) -> dict[int, set[str]]:
    """Increment number -> the names of its inputs that are gone from the sources (empty unless
    ``drop_removed``)."""
    ledger = read_ledger(langid_loc) if drop_removed else None
    gone = set((ledger or {}).get("removed", []))
    out = {e["number"]: gone & set(e["inputs"]) for e in (ledger or {}).get("increments", [])}
    return {number: names for number, names in out.items() if names}


def positions(langid_loc: Location, paths: list[str], names: set[str]) -> dict[str, np.ndarray]:
    """Input name -> row positions (in the files' row sequence) of its documents, for the inputs ``names``."""
    found: dict[str, list[np.ndarray]] = {n: [] for n in names}
    row = 0
    for path in paths:
        for batch in read_batches(langid_loc.child(path), ["source", "doc_id"], 1 << 16):
            of = input_names(batch).to_numpy()
            for name in names:
                found[name].append(np.flatnonzero(of == name) + row)
            row += batch.num_rows
    return {n: np.concatenate(p) if p else np.zeros(0, np.int64) for n, p in found.items()}


def drops_in(found: dict[str, np.ndarray], lo: int, hi: int) -> list[str]:
    """The inputs among ``found`` with a document in rows ``[lo, hi)``: a shard's ``drop`` parameter."""
    return sorted(name for name, pos in found.items() if ((pos >= lo) & (pos < hi)).any())
