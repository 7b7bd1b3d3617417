"""What the shard stage shows in the Prefect UI: tokens per language and documents and tokens per split."""

from __future__ import annotations

from xlmflow.storage import RunDir, read_manifest
from xlmflow.tasks.common.artifacts import Report, bars, table
from xlmflow.tasks.shard import STAGE

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version


def report(run: RunDir) -> Report:
    m = read_manifest(run.stage(STAGE))
    totals = m.stats["totals"]
    langs = sorted(totals["train"])
    rows = [
        [lang, *(totals[s].get(lang, {}).get(k, 0) for s in ("train", "valid") for k in ("documents", "tokens"))]
        for lang in langs
    ]
    md = (
        f"# Token shards\n\n{m.stats['tokens_total']:,} tokens in {m.stats['units']} shards.\n\n"
        + bars("train tokens per language", langs, [totals["train"][x]["tokens"] for x in langs], "tokens")
        + "\n\n"
        + table(["language", "train docs", "train tokens", "valid docs", "valid tokens"], rows)
    )
    return Report(
        md,
        f"shard: {m.stats['tokens_total']:,} tokens, {len(langs)} languages",
        {"tokens": m.stats["tokens_total"], "shards": m.stats["units"]},
    )
