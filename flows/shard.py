"""The shard flow: plan shards from the clean corpus and the vocabulary, tokenise each shard as a task, commit.

Shard units run on threads: the work is in pyarrow and tokenizers (Rust, its own
thread pool), which release the GIL; bounded, so memory stays bounded too.
"""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import shard
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, run_unit, submit_units
from xlmflow.tasks.shard import ShardParams
from xlmflow.tasks.shard import ui as shard_ui


@flow(name="shard", task_runner=task_runner())
@stage_body("shard")
def shard_flow(run_dir: str, params: ShardParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    units = shard.plan_task(run, params)
    refs = [f.result() for f in submit_units(shard.shard_task, units)]
    ref = run_unit(shard.commit_task, shard.stage_for(run, params, refs), refs)
    artifacts.publish_task(shard.STAGE, run_dir, shard_ui.report)
    return ref


STAGE = Stage(
    name="shard",
    report=shard_ui.report,
    flow=shard_flow,
    params=ShardParams,
    reads=shard.READS,
    parallel_field="parallel",
    help="tokenise the clean corpus into train/valid Parquet token shards with a checksummed manifest",
    flags={
        "--valid-fraction": "valid_fraction",
        "--min-valid-docs": "min_valid_docs",
        "--shard-docs": "shard_docs",
        "--drop-removed": "drop_removed",
    },
)
