"""The vocab flow: plan the one unit, build it (cached by fingerprint), publish the report as an artifact."""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.config import task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import vocab
from xlmflow.tasks.runtime import Ref, run_unit


@flow(name="vocab", task_runner=task_runner())
def vocab_flow(run_dir: str, params: vocab.VocabParams | None = None) -> Ref:
    params = params or vocab.VocabParams()
    unit = vocab.plan_task(RunDir.of(run_dir), params)
    ref = run_unit(vocab.vocab_task, unit)
    vocab.report_task(ref)
    return ref
