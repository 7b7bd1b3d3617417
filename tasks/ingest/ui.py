"""What the ingest stage shows in the Prefect UI: documents and quarantined records per input file."""

from __future__ import annotations

from xlmflow.storage import RunDir, read_manifest
from xlmflow.tasks.common.artifacts import Report, table
from xlmflow.tasks.ingest import STAGE

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version


def report(run: RunDir) -> Report:
    loc = run.stage(STAGE)
    m = read_manifest(loc)
    rows = []
    for unit in sorted({f.path.split("/")[1] for f in m.files if f.path.startswith("parts/")}):
        u = read_manifest(loc.child("parts", unit))
        rows.append([unit, u.stats.get("documents", 0), u.stats.get("quarantined", 0)])
    docs, bad = m.stats.get("documents", 0), m.stats.get("quarantined", 0)
    md = (
        f"# Ingest\n\n{docs:,} documents from {len(rows)} input files; {bad:,} records quarantined "
        f"(their reasons in `ingest/parts/*/quarantine-*.parquet`).\n\n"
        + table(["input", "documents", "quarantined"], rows)
    )
    return Report(md, f"ingest: {docs:,} documents, {bad:,} quarantined", {"documents": docs, "quarantined": bad})
