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
from xlmflow.flows.stage import holds_run_lock, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, invalidate_task


@flow(name="pipeline", task_runner=task_runner())
@holds_run_lock
def pipeline(
    run_dir: str,
    config: PipelineConfig | None = None,
    dask: str | None = None,
    stages: list[str] | None = None,
    force: list[str] | None = None,
) -> dict[str, Ref]:
    """Every stage of xlmflow in order, on one run directory (plain text: the Prefect UI shows this).

    Args:
        run_dir: the run directory, a local path or an fsspec URL (s3://bucket/run)
        config: every stage's settings, recorded as the run's; left empty, the run directory's recorded
            configuration (its xlmflow.toml), or the bundled demo's for a run directory that has none
        dask: run the data stages' units on Dask: a scheduler address (tcp://host:8786), or local for a
            cluster on this machine; empty: threads in this process
        stages: run only these stages (names such as ingest, train); empty: every stage
        force: rebuild these stages although their outputs are committed and current
    """
    config = config or PipelineConfig.for_run(run_dir)
    chosen = [s for s in STAGES if stages is None or s.name in stages]
    for s in chosen:  # refuse what could not finish before any stage does work
        if s.check:
            s.check(RunDir.of(run_dir), config.stage_params(s.name))
    config.record(run_dir)
    refs = {}
    for s in chosen:
        if s.name in (force or []):
            invalidate_task(run_dir, s.name)
        refs[s.name] = on(s.flow, dask)(run_dir, config.stage_params(s.name))
    artifacts.summary_task(run_dir, [(s.name, s.report) for s in STAGES if s.report and s.name in refs])
    return refs


def selected(only: list[str] | None, start: str | None) -> list[str] | None:
    """The stages ``--only`` names, or ``--from`` one on, in pipeline order; None = all."""
    names = [s.name for s in STAGES]
    for name in [*(only or []), *([start] if start else [])]:
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; stages are {', '.join(names)}")
    if only:
        return [n for n in names if n in only]
    return names[names.index(start) :] if start else None


def on(fl, dask: str | None):
    """The stage flow with its units on Dask when asked, else as it is (bounded threads)."""
    return fl.with_options(task_runner=task_runner(dask)) if dask else fl
