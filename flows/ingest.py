"""The ingest flow: plan one unit per input file, ingest each as a task, commit the stage."""

from __future__ import annotations

from prefect import flow

from xlmflow.storage import RunDir
from xlmflow.tasks import ingest
from xlmflow.tasks.ingest import IngestParams
from xlmflow.tasks.runtime import Ref, run_unit, submit_units

from xlmflow.flows.config import demo_ingest, task_runner


@flow(name="ingest", task_runner=task_runner())
def ingest_flow(run_dir: str, params: IngestParams | None = None) -> Ref:
    params = params or demo_ingest()
    run = RunDir.of(run_dir)
    units = ingest.plan_task(run, params)
    refs = [f.result() for f in submit_units(ingest.ingest_file, units)]
    return run_unit(ingest.commit_task, ingest.stage_for(run, params, refs), refs)
