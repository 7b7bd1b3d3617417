"""What the finetune stage shows in the Prefect UI: the fine-tuning loss curve and the examples per direction."""

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version

import json  # noqa: E402  (the declaration above comes first, as in every presentation module of a stage)

from xlmflow.storage import RunDir  # noqa: E402
from xlmflow.tasks.common.artifacts import Report, lines, table  # noqa: E402
from xlmflow.tasks.finetune import STAGE, TRANSLATE  # noqa: E402


def finetune_report(run: RunDir) -> Report:
    loc = run.stage(STAGE).child(TRANSLATE)
    if not loc.child("summary.json").exists():
        return Report(
            "# Fine-tuning\n\nNo translation model: no translation pairs, or finetune.translate = false.",
            "finetune: no model",
            {},
        )
    with loc.child("metrics.jsonl").open("rb") as f:
        rows = [json.loads(x) for x in f.read().decode().splitlines() if x.strip()]
    with loc.child("summary.json").open("rb") as f:
        s = json.loads(f.read())
    md = "\n\n".join(
        [
            f"# Fine-tuning for translation\n\n{s['steps']} steps; loss on target tokens {s['loss_first']:.3f} -> "
            f"{s['loss_last']:.3f}. Scores (chrF++ beside copying the source) are in the evaluate stage's report.",
            lines("fine-tuning loss", [r["step"] for r in rows], [r["loss"] for r in rows], "nats/target token"),
            table(["direction", "examples"], [[d, f"{n:,}"] for d, n in sorted(s["examples"].items())]),
        ]
    )
    return Report(
        md,
        f"finetune: loss {s['loss_first']:.2f} -> {s['loss_last']:.2f} in {s['steps']} steps",
        {"loss": round(s["loss_last"], 3), "steps": s["steps"]},
    )


report = finetune_report  # the name every stage's ui module gives its report
