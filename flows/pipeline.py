"""The flows: which task runs on what, in which order. No algorithms here.

Every stage is a flow of its own (so the CLI and deployments can trigger any single
stage) and ``pipeline`` chains them. Units of a stage are mapped over the flow's task
runner: threads by default, a Dask cluster with ``--dask`` (prefect-dask).
"""

from __future__ import annotations

import os

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from xlmflow.storage import RunDir
from xlmflow.tasks import ingest
from xlmflow.tasks.runtime import Ref

from xlmflow.flows.config import PipelineConfig

#: Units run on threads (the work is in Arrow/polars/fastText/tokenizers, which release the GIL);
#: bounded, so memory stays bounded too. ``--dask`` swaps in a Dask cluster.
WORKERS = int(os.environ.get("XLMFLOW_WORKERS", os.cpu_count() or 2))


def _runner() -> ThreadPoolTaskRunner:
    return ThreadPoolTaskRunner(max_workers=WORKERS)


@flow(name="ingest", task_runner=_runner())
def ingest_flow(run_dir: str, config: PipelineConfig | None = None) -> Ref:
    config = config or PipelineConfig()
    run = RunDir.of(run_dir)
    units = ingest.plan_task(run, config.ingest)
    refs = [f.result() for f in ingest.ingest_file.map(units)]
    return ingest.commit_task(ingest.stage_for(run, config.ingest, refs), refs)


@flow(name="pipeline", task_runner=_runner())
def pipeline(run_dir: str, config: PipelineConfig | None = None) -> dict[str, Ref]:
    config = config or PipelineConfig()
    return {"ingest": ingest_flow(run_dir, config)}


FLOWS = {"ingest": ingest_flow, "run": pipeline}
