"""The whole pipeline: each stage's flow, in registry order. No algorithms here.

Every stage is a flow of its own (``flows/<stage>.py``), so the CLI and deployments can
trigger any single stage; ``pipeline`` chains them as subflows. Units of a stage are
mapped over the flow's task runner: bounded threads by default, a Dask cluster with
``--dask`` (prefect-dask).
"""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.config import PipelineConfig
from xlmflow.flows.registry import STAGES
from xlmflow.flows.stage import task_runner
from xlmflow.tasks import artifacts
from xlmflow.tasks.runtime import Ref


@flow(name="pipeline", task_runner=task_runner())
def pipeline(run_dir: str, config: PipelineConfig | None = None, dask: str | None = None) -> dict[str, Ref]:
    """Every stage in order (the demo when no config is given).

    ``dask`` (scheduler address or ``local``) runs their units on Dask."""
    config = config or PipelineConfig.demo()
    refs = {s.name: on(s.flow, dask)(run_dir, config.stage_params(s.name)) for s in STAGES}
    artifacts.summary_task(run_dir, [(s.name, s.report) for s in STAGES if s.report])
    return refs


def on(fl, dask: str | None):
    """The stage flow with its units on Dask when asked, else as it is (bounded threads)."""
    return fl.with_options(task_runner=task_runner(dask)) if dask else fl
