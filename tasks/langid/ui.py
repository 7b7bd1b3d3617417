"""What the langid stage shows in the Prefect UI: clean documents per language, rejections by reason, and
the claimed vs detected language pairs."""

from __future__ import annotations

import json

from xlmflow.storage import RunDir
from xlmflow.tasks.common.artifacts import Report, bars, table
from xlmflow.tasks.langid import STAGE

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version


def report(run: RunDir) -> Report:
    with run.stage(STAGE).child("stats.json").open("rb") as f:
        s = json.loads(f.read())
    clean = sorted(s["clean"].items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [(lang, n) for lang, n in clean if n > 0]
    reasons = [r for r, n in sorted(s["rejected_by_reason"].items(), key=lambda kv: -kv[1])][:5]
    rows = [[lang, n, *(s["per_language"][lang]["rejected"].get(r, 0) for r in reasons)] for lang, n in kept]
    others = [lang for lang in s["per_language"] if lang not in dict(kept)]
    if others:
        rows.append(
            [
                f"{len(others)} other languages (none kept)",
                0,
                *(sum(s["per_language"][x]["rejected"].get(r, 0) for x in others) for r in reasons),
            ]
        )
    pairs = sorted(((c, d, n) for c, per in s["mismatch"].items() for d, n in per.items()), key=lambda x: -x[2])[:15]
    d = s["documents"]
    md = "\n\n".join(
        [
            f"# Language ID and filtering\n\n{d['scored']:,} documents scored, {d['clean']:,} kept in {len(kept)} "
            f"languages, {d['rejected']:,} rejected (every one with its reason under `langid/`).",
            bars("clean documents per language", [x for x, _ in kept], [n for _, n in kept], "documents"),
            table(["language", "clean", *(f"rejected: {r}" for r in reasons)], rows),
            "## Claimed vs detected language (documents relabelled or dropped)",
            table(["claimed", "detected", "documents"], [list(p) for p in pairs]) if pairs else "none",
            "All rejection reasons: " + ", ".join(f"{r} {n:,}" for r, n in s["rejected_by_reason"].items()),
        ]
    )
    return Report(
        md,
        f"langid: {d['clean']:,} of {d['scored']:,} documents kept in {len(kept)} languages",
        {"kept": d["clean"], "languages": len(kept)},
    )
