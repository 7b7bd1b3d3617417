"""The finetune flow: plan the fine-tuning units, fine-tune (or resume) each in a subprocess, commit the stage."""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import finetune
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, run_unit, submit_units
from xlmflow.tasks.finetune.params import FinetuneParams
from xlmflow.tasks.finetune.ui import finetune_report


@flow(name="finetune", task_runner=task_runner())
@stage_body("finetune")
def finetune_flow(run_dir: str, params: FinetuneParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    # the units at once (each a process with its share of the cores): a small model's steps use cores poorly
    refs = [f.result() for f in submit_units(finetune.finetune_task, finetune.plan_task(run, params))]
    ref = run_unit(finetune.commit_task, finetune.stage_for(run, params, refs), refs)
    artifacts.publish_task("finetune", run_dir, finetune_report)
    return ref


def _flags(g) -> None:
    g.add_argument(
        "--labelled",
        action="append",
        metavar="PATH",
        help="a labelled set: a Parquet/TSV table with text, label, lang (and split) columns; a zero-shot classifier "
        "is fine-tuned on its classify_lang rows and tested on every language (repeatable; replaces the configured "
        "ones)",
    )


def _apply(args, params: FinetuneParams) -> None:
    if getattr(args, "labelled", None):
        params.labelled = list(args.labelled)


STAGE = Stage(
    name="finetune",
    report=finetune_report,
    flow=finetune_flow,
    params=FinetuneParams,
    reads=finetune.READS,
    help="fine-tune the pretrained model: translation (finetune/translate; xlmflow translate) and a zero-shot "
    "cross-lingual classifier per parallel set and labelled set (finetune/classify-<set>)",
    parallel_field="parallel",
    flags={
        "--translate": "translate",
        "--classify": "classify",
        "--classify-steps": "classify_steps",
        "--finetune-steps": "max_steps",
        "--finetune-batch-size": "batch_size",
        "--finetune-lr": "lr",
        "--finetune-precision": "precision",
    },
    extra_flags=_flags,
    apply_extra=_apply,
)
