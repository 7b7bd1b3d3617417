"""What the train stage shows in the Prefect UI: the loss curve, validation loss per language, epochs."""

PRESENTATION_ONLY = True  # storage.fingerprint leaves this module out of every code version

import json  # noqa: E402  (the declaration above comes first, as in every presentation module of a stage)

from xlmflow.storage import RunDir  # noqa: E402
from xlmflow.tasks.common.artifacts import Report, bars, lines, table  # noqa: E402
from xlmflow.tasks.train import STAGE  # noqa: E402


def train_report(run: RunDir) -> Report:
    loc = run.stage(STAGE)
    with loc.child("metrics.jsonl").open("rb") as f:
        rows = [json.loads(x) for x in f.read().decode().splitlines() if x.strip()]
    with loc.child("summary.json").open("rb") as f:
        s = json.loads(f.read())
    losses = [r for r in rows if "loss" in r]
    valid = sorted(s["valid_loss"].items())
    md = "\n\n".join(
        [
            f"# Training\n\n{s['steps']} steps, {s['tokens']:,} tokens, {s['parameters']:,} parameters on "
            f"{s['world_size']} process(es); train loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}.",
            lines("train loss", [r["step"] for r in losses], [r["loss"] for r in losses], "nats/token"),
            bars("validation loss per language", [x for x, _ in valid], [v for _, v in valid], "nats/token"),
            table(
                ["language", "valid loss", "effective epochs"],
                [[x, f"{v:.3f}", f"{s['effective_epochs'].get(x, 0):.2f}"] for x, v in valid],
            ),
        ]
    )
    return Report(
        md,
        f"train: loss {s['loss_first']:.2f} -> {s['loss_last']:.2f} in {s['steps']} steps",
        {"loss": round(s["loss_last"], 3), "steps": s["steps"]},
    )


report = train_report  # the name every stage's ui module gives its report
