"""The whole pipeline: each stage's flow, in order. No algorithms here.

Every stage is a flow of its own (``flows/<stage>.py``), so the CLI and deployments can
trigger any single stage; ``pipeline`` chains them as subflows. Units of a stage are
mapped over the flow's task runner: bounded threads by default, a Dask cluster with
``--dask`` (prefect-dask).
"""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.config import PipelineConfig, task_runner
from xlmflow.flows.ingest import ingest_flow
from xlmflow.flows.langid import langid_flow
from xlmflow.flows.shard import shard_flow
from xlmflow.flows.vocab import vocab_flow
from xlmflow.tasks.runtime import Ref

#: stage name -> its flow, in pipeline order; each takes (run_dir, the PipelineConfig section of that name)
STAGE_FLOWS = {"ingest": ingest_flow, "langid": langid_flow, "vocab": vocab_flow, "shard": shard_flow}


@flow(name="pipeline", task_runner=task_runner())
def pipeline(run_dir: str, config: PipelineConfig | None = None, dask: str | None = None) -> dict[str, Ref]:
    """Every stage in order; ``dask`` (scheduler address or ``local``) runs their units on Dask."""
    config = config or PipelineConfig()
    return {name: on(fl, dask)(run_dir, getattr(config, name)) for name, fl in STAGE_FLOWS.items()}


def on(fl, dask: str | None):
    """The stage flow with its units on Dask when asked, else as it is (bounded threads)."""
    return fl.with_options(task_runner=task_runner(dask)) if dask else fl
