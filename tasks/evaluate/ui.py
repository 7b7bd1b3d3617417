"""What the evaluate stage shows in the Prefect UI: its report.md with a bits-per-byte chart, without the plots."""

from __future__ import annotations

import json

from xlmflow.storage import RunDir
from xlmflow.tasks.common.artifacts import Report, bars
from xlmflow.tasks.evaluate import STAGE

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version


def report(run: RunDir) -> Report:
    loc = run.stage(STAGE)
    with loc.child("metrics.json").open("rb") as f:
        m = json.loads(f.read())
    with loc.child("report.md").open("rb") as f:
        md = f.read().decode()
    bpb = sorted(m["bits_per_byte"].items())
    chart = bars("bits per byte per language (lower is better)", [x for x, _ in bpb], [v for _, v in bpb], "bits/byte")
    md = md.replace("## Bits per byte and generation\n", "## Bits per byte and generation\n\n" + chart + "\n", 1)
    md = md.split("\n## Plots", 1)[0]  # report.md's PNGs lie in the run directory: the UI cannot show them
    mean = sum(v for _, v in bpb) / max(len(bpb), 1)
    retrieval = {s: round(r["mean_acc_at_1"], 3) for s, r in m["retrieval"].items() if r.get("mean_acc_at_1")}
    return Report(
        md,
        f"evaluate: {mean:.3f} bits/byte on average over {len(bpb)} languages",
        {"bits_per_byte": round(mean, 3), "retrieval_acc_at_1": retrieval},
    )
