"""Which ingest units make which increment: the langid stage's ledger (:mod:`xlmflow.storage.increments`).

A run without ``incremental`` decides every document again: one increment holding every ingest unit, its
dedup over all of them (the exact full rebuild). An incremental run keeps the ledger's increments as they are
(their dedup units are re-planned from the ledger, so they are current and never re-decided) and makes the
ingest units it has not seen (new files, and files whose bytes changed) the next increment, deduplicated
against the indexes of the earlier ones. A file gone from the sources is reported and listed in the ledger
(``removed``); its documents stay in the clean corpus (they are in committed models), and the shard stage leaves
them out when told to (``drop_removed``). Changing the dedup settings makes the indexes useless: that run is a
full rebuild, and says so.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from xlmflow.storage import Location, RunDir, hash_json, read_manifest, relative
from xlmflow.storage.increments import read_ledger
from xlmflow.tasks.common.runtime import Input, Unit, logger

STAGE = "langid"  # the stage whose folder holds the ledger


@dataclass
class Increments:
    """The increments a langid run commits: the earlier ones as the ledger has them, and the new one."""

    dedup: dict[str, Any]  # the dedup settings the indexes were made with
    earlier: list[dict[str, Any]]  # ledger entries kept as they are
    new: dict[str, str]  # ingest unit -> content fingerprint: the next increment's inputs (empty: none)
    number: int  # the next increment's number
    removed: list[str] = field(default_factory=list)  # ingest units in the ledger, gone from the sources
    changed: list[str] = field(default_factory=list)  # ingest units whose bytes changed since the ledger
    full_reason: str | None = None  # why this run rebuilds every increment (None: it appends)


def inputs_of(filter_units: list[Unit]) -> dict[str, str]:
    """Ingest unit name -> a fingerprint of its documents' bytes (the ingest parts' sha256)."""
    return {u.name: hash_json(sorted(i.fingerprint for _, i in u.each("docs"))) for u in filter_units}


def split(stage: Location, dedup: dict[str, Any], filter_units: list[Unit], incremental: bool) -> Increments:
    """Earlier increments (kept) and the new one's inputs, from the committed ledger in ``stage``."""
    current = inputs_of(filter_units)
    ledger = read_ledger(stage) if incremental else None
    reason = None
    if incremental and ledger is None:
        reason = "no committed increments yet"
    elif ledger is not None and ledger.get("dedup") != dedup:
        reason = "the dedup settings changed since the earlier increments were indexed"
        logger().warning("langid: %s: every increment is decided again (a full rebuild)", reason)
        ledger = None
    if ledger is None:
        return Increments(dedup, [], current, 1, full_reason=reason or "not an incremental run")
    seen: dict[str, str] = {}
    for inc in ledger["increments"]:
        seen.update(inc["inputs"])
    new = {name: fp for name, fp in current.items() if seen.get(name) != fp}
    changed = sorted(name for name in new if name in seen)
    removed = sorted(name for name in seen if name not in current)
    for name in removed:
        logger().warning(
            "langid: input %s is gone from the sources; its documents stay in the earlier increments (--drop-removed "
            "leaves them out of the shards; run without --incremental to rebuild the model without them)",
            name,
        )
    for name in changed:
        logger().warning(
            "langid: input %s changed since it was read; its documents are read again as new ones (those that "
            "repeat kept documents are dropped as duplicates)",
            name,
        )
    number = ledger["increments"][-1]["number"] + 1
    return Increments(dedup, ledger["increments"], new, number, removed, changed)


def earlier_units(inc: Increments, root: Location) -> list[Unit]:
    """The dedup units of the earlier increments, as they were planned."""
    return [unit_from_record(r, root) for entry in inc.earlier for r in entry["dedup"]]


def ledger(inc: Increments, new_units: list[Unit], root: Location, previous: dict | None) -> dict[str, Any]:
    """The ledger to commit: the earlier entries, the new increment's (its date kept from a ledger that
    already has it, so a run started again commits the same bytes), and the inputs gone from the sources."""
    entries = list(inc.earlier)
    if inc.new:
        date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        for old in (previous or {}).get("increments", []):
            if old["number"] == inc.number and old["inputs"] == inc.new:
                date = old["date"]
        entries.append(
            {
                "number": inc.number,
                "date": date,
                "inputs": dict(sorted(inc.new.items())),
                "dedup": [unit_record(u, root) for u in new_units],
            }
        )
    out = {"dedup": inc.dedup, "increments": entries}
    if inc.removed:  # the shard stage's drop_removed reads it
        out["removed"] = inc.removed
    return out


def unit_record(unit: Unit, root: Location) -> dict[str, Any]:
    """``unit`` as JSON, its paths relative to the run directory ``root`` (a moved run directory keeps them)."""

    def rel(uri: str) -> str:
        try:
            return "./" + relative(root.uri, uri)
        except ValueError:
            return uri

    return {
        "stage": unit.stage,
        "name": unit.name,
        "out": rel(unit.out),
        "code_version": unit.code_version,
        "params": unit.params,
        "inputs": {
            role: {name: [rel(i.uri), i.fingerprint] for name, i in sorted(group.items())}
            for role, group in sorted(unit.inputs.items())
        },
        "options": unit.options,
    }


def unit_from_record(record: dict[str, Any], root: Location) -> Unit:
    """The unit :func:`unit_record` wrote, its paths inside ``root`` again."""

    def uri(path: str) -> str:
        return root.child(path[2:]).uri if path.startswith("./") else path

    return Unit(
        stage=record["stage"],
        name=record["name"],
        out=uri(record["out"]),
        code_version=record["code_version"],
        params=record["params"],
        inputs={
            role: {name: Input(uri(p), fp) for name, (p, fp) in group.items()}
            for role, group in record["inputs"].items()
        },
        options=record.get("options", {}),
    )


def preview(run: RunDir, ingest_units: list[Unit]) -> dict[str, Any] | None:
    """What the next incremental run would take in, from the ingest units it would plan (``ingest.plan``) and the
    committed ledger: ``new`` and ``reread`` (bytes changed, or ingest's settings or code: read again, repeats of
    kept documents dropped) input names, ``removed`` ones, the ``documents`` of those already ingested and the
    input ``bytes`` of all of them. None: no ledger yet (the next run makes the first increment of everything)."""
    ledger = read_ledger(run.stage(STAGE))
    if ledger is None:
        return None
    seen = {name for inc in ledger["increments"] for name in inc["inputs"]}
    new, reread, documents, size = [], [], 0, 0
    for u in ingest_units:
        m = read_manifest(Location(u.out))
        current = m is not None and m.fingerprint == u.fingerprint
        if u.name in seen and current:
            continue
        (reread if u.name in seen else new).append(u.name)
        documents += m.stats.get("documents", 0) if current else 0
        loc = Location(u.input("input").uri)
        size += loc.fs.size(loc.path) if loc.fs.isfile(loc.path) else 0  # a dataset folder: not counted
    removed = sorted(seen - {u.name for u in ingest_units})
    return {"new": new, "reread": reread, "removed": removed, "documents": documents, "bytes": size, "seen": seen}
