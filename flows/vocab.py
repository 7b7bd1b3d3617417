"""The vocab flow: plan the one unit, build it (cached by fingerprint), publish the report as an artifact."""

from __future__ import annotations

from prefect import flow, task

from xlmflow.flows.config import task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import vocab
from xlmflow.tasks.fairness import markdown
from xlmflow.tasks.runtime import Ref, run_unit


@task(name="vocab-report")
def publish_report(ref: Ref) -> None:
    """A markdown artifact (key ``vocab-report``) from the committed report.json."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key="vocab-report", markdown=markdown(vocab.read_report(ref)),
                             description=f"vocab {ref.fingerprint[:12]}")


@flow(name="vocab", task_runner=task_runner())
def vocab_flow(run_dir: str, params: vocab.VocabParams | None = None) -> Ref:
    params = params or vocab.VocabParams()
    unit = vocab.plan_task(RunDir.of(run_dir), params)
    ref = run_unit(vocab.vocab_task, unit)
    publish_report(ref)
    return ref
