"""What the evaluate stage shows in the Prefect UI: its report.md (led by the retrieval-vs-baselines tables) with a
per-layer retrieval chart per set and a bits-per-byte chart, without the PNG plots."""

from __future__ import annotations

import json

from xlmflow.storage import RunDir
from xlmflow.tasks.common.artifacts import Report, bars
from xlmflow.tasks.evaluate import STAGE

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version
#: a mermaid xychart with three line colours (the shared one has one): raw blue, centred red, baseline grey
LINES = (
    '```mermaid\n%%{init: {"themeVariables": {"xyChart": {"plotColorPalette": "#2563eb, #dc2626, #6b7280"}}}}%%\n'
    "xychart-beta\n"
)


def report(run: RunDir) -> Report:
    loc = run.stage(STAGE)
    with loc.child("metrics.json").open("rb") as f:
        m = json.loads(f.read())
    with loc.child("report.md").open("rb") as f:
        md = f.read().decode()
    bpb = sorted(m["bits_per_byte"].items())
    chart = bars("bits per byte per language (lower is better)", [x for x, _ in bpb], [v for _, v in bpb], "bits/byte")
    layers = "".join(_layers_chart(s, r) + "\n\n" for s, r in sorted(m["retrieval"].items()) if r.get("pairs"))
    md = md.replace(
        "## Bits per byte and generation\n", layers + "## Bits per byte and generation\n\n" + chart + "\n", 1
    )
    md = md.split("\n## Plots", 1)[0]  # report.md's PNGs lie in the run directory: the UI cannot show them
    mean = sum(v for _, v in bpb) / max(len(bpb), 1)
    retrieval = {s: round(r["acc_at_1"], 3) for s, r in m["retrieval"].items() if r.get("acc_at_1") is not None}
    beats = {s: "yes" if r["beats_baselines"] else "no" for s, r in m["retrieval"].items() if r.get("pairs")}
    regressions = m.get("previous_model", {}).get("regressions")
    summary = f"evaluate: {mean:.3f} bits/byte on average over {len(bpb)} languages"
    if regressions is not None:
        summary += f"; {len(regressions)} regression(s) against {m['previous_model']['version']}"
    figures = {"bits_per_byte": round(mean, 3), "retrieval_acc_at_1": retrieval, "beats_lexical_overlap": beats}
    return Report(md, summary, figures | ({"regressions": regressions} if regressions is not None else {}))


def _layers_chart(name: str, r: dict) -> str:
    """The first model's eval acc@1 per layer on one set: raw, centred, and the better lexical baseline (flat)."""
    raw, centred = r["per_layer"]["raw"], r["per_layer"]["centred"]
    best = max(r["baselines"].values())
    top = max([*raw, *centred, best, r["chance"]]) * 1.1 or 1
    xs = ", ".join(f'"{i}"' for i in range(len(raw)))

    def line(ys: list[float]) -> str:
        return "  line [" + ", ".join(f"{y:.4g}" for y in ys) + "]\n"

    return (
        f"**{name}**: acc@1 on the eval part per layer (0 = embeddings): raw (blue), centred (red), the better "
        "lexical baseline (grey, flat)\n\n"
        f'{LINES}  title "{name}: retrieval per layer"\n  x-axis [{xs}]\n  y-axis "acc@1" 0 --> {top:.4g}\n'
        + line(raw)
        + line(centred)
        + line([best] * len(raw))
        + "```"
    )
