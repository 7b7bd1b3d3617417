"""The vocab flow: plan the one unit, build it (cached by fingerprint), publish the report as an artifact."""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, incremental, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import vocab
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, logger, run_unit
from xlmflow.tasks.vocab import ui as vocab_ui


@flow(name="vocab", task_runner=task_runner())
@stage_body("vocab")
def vocab_flow(run_dir: str, params: vocab.VocabParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    ref = vocab.frozen(run) if incremental(run) else None
    if ref is None:
        ref = run_unit(vocab.vocab_task, vocab.plan_task(run, params))
    else:
        logger().info("vocab: frozen (an incremental run keeps the committed vocabulary; --force retrains it)")
        vocab.warn_untagged(run)
    artifacts.publish_task(vocab.STAGE, run_dir, vocab_ui.report)
    return ref


STAGE = Stage(
    name="vocab",
    report=vocab_ui.report,
    flow=vocab_flow,
    params=vocab.VocabParams,
    reads=vocab.READS,
    help="train one byte-level BPE on a temperature-sampled language mix, alignment table, fairness report",
    flags={"--vocab-size": "vocab_size", "--alpha": "alpha", "--vocab-seed": "seed", "--dictionary": "dictionary"},
    parallel_field="parallel",
)
