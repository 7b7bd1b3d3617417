"""The evaluate flow: one unit per model (bits per byte, generation) and per model and parallel set
(retrieval, transfer probe, translation, contamination), then the report."""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import evaluate
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, run_unit, submit_units
from xlmflow.tasks.evaluate import EvalParams
from xlmflow.tasks.evaluate import ui as evaluate_ui


@flow(name="evaluate", task_runner=task_runner())
@stage_body("evaluate")
def evaluate_flow(run_dir: str, params: EvalParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    lm_units, set_units, finetuned_units = evaluate.plan_task(run, params)
    futures = submit_units(evaluate.lm_task, lm_units) + submit_units(evaluate.set_task, set_units)
    refs = [f.result() for f in futures + submit_units(evaluate.finetuned_task, finetuned_units)]
    ref = run_unit(evaluate.commit_task, evaluate.stage_for(run, params, refs), refs)
    artifacts.publish_task(evaluate.STAGE, run_dir, evaluate_ui.report)
    return ref


def _flags(g) -> None:
    g.add_argument(
        "--model",
        action="append",
        dest="eval_models",
        metavar="PATH",
        help="a model folder or run directory to evaluate (repeatable: side by side; default: this run's)",
    )


def _apply(args, params: EvalParams) -> None:
    if getattr(args, "eval_models", None):
        params.models = list(args.eval_models)


STAGE = Stage(
    name="evaluate",
    report=evaluate_ui.report,
    flow=evaluate_flow,
    params=EvalParams,
    reads=evaluate.READS,
    help="bits per byte, cross-lingual retrieval, transfer probe, generation, chrF++/BLEU (few-shot and "
    "fine-tuned), contamination",
    flags={"--max-docs": "max_docs", "--max-segments": "max_segments"},
    extra_flags=_flags,
    apply_extra=_apply,
    parallel_field="parallel",
)
