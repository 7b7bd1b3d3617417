"""What the vocab stage shows in the Prefect UI: the fairness report and fertility per language."""

from __future__ import annotations

import json

from xlmflow.storage import RunDir
from xlmflow.tasks.common.artifacts import Report, bars
from xlmflow.tasks.vocab import STAGE

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version


def report(run: RunDir) -> Report:
    from xlmflow.tasks.vocab.fairness import markdown

    with run.stage(STAGE).child("report.json").open("rb") as f:
        r = json.loads(f.read())
    langs = sorted(r["languages"])
    md = (
        markdown(r)
        + "\n\n"
        + bars(
            "fertility (tokens per word; zh/ja per character)",
            langs,
            [r["languages"][x].get("fertility") or 0 for x in langs],
            "fertility",
        )
    )
    return Report(
        md,
        f"vocab: {r['vocab_size']:,} ids for {len(langs)} languages",
        {"vocab_size": r["vocab_size"], "languages": len(langs)},
    )
