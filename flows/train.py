"""The train flow: plan the one unit, train (or resume) it in subprocesses, publish the loss curves."""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, incremental, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import train
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, logger, run_unit
from xlmflow.tasks.train import TrainParams
from xlmflow.tasks.train.ui import train_report


@flow(name="train", task_runner=task_runner())
@stage_body("train")
def train_flow(run_dir: str, params: TrainParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    ref = train.covered(run) if incremental(run) else None
    if ref is not None:
        logger().info("train: the committed model has trained on every increment; nothing new to train on")
    else:
        ref = run_unit(train.train_task, train.plan_task(run, params, incremental(run)))
    artifacts.publish_task("train", run_dir, train_report)
    return ref


STAGE = Stage(
    name="train",
    report=train_report,
    flow=train_flow,
    params=TrainParams,
    reads=train.READS,
    check=train.check_run_dir,  # a remote run directory is refused before any stage runs
    help="train the cross-lingual GPT-2 (language embeddings, aligned vocabulary) with Accelerate",
    flags={
        "--preset": "preset",
        "--max-steps": "max_steps",
        "--num-processes": "num_processes",
        "--align": "align",
        "--parallel-share": "parallel_share",
        "--parallel-schedule": "parallel_schedule",
        "--lang-embeddings": "lang_embeddings",
        "--batch-size": "batch_size",
        "--lr": "lr",
        "--precision": "precision",
        "--accelerate-config": "accelerate_config",
    },
)
