"""``xlmflow serve``: the pipeline (nightly, one run at a time) and every stage as Prefect deployments served
straight from this process (``flow.to_deployment`` + ``prefect.serve``): no work pool, no worker. Trigger them
from the UI or ``prefect deployment run 'ingest/ingest'``. ``deployments/prefect.yaml`` (work pool + worker) stays
the route for production."""

from __future__ import annotations

from xlmflow.flows.config import PipelineConfig
from xlmflow.flows.pipeline import pipeline
from xlmflow.flows.registry import STAGES

NIGHTLY = "0 2 * * *"


def parameters(run_dir: str, config: PipelineConfig | None = None) -> dict[str, dict]:
    """Each deployment's default parameters by name (``nightly`` and one per stage): the run directory and the
    configuration (the demo's when none is given) written out in full, so a run form shows real values (a
    ``package:`` path for the bundled corpus, never this machine's absolute paths). ``deployments/prefect.yaml``
    holds the same (a test compares them)."""
    config = config or PipelineConfig.demo()
    found = {"nightly": {"run_dir": run_dir, "config": config.model_dump(mode="json")}}
    for s in STAGES:
        found[s.name] = {"run_dir": run_dir, "params": config.stage_params(s.name).model_dump(mode="json")}
    return found


def deployments(run_dir: str, cron: str | None = NIGHTLY, config: PipelineConfig | None = None) -> list:
    """One deployment for the pipeline (scheduled by ``cron``, concurrency limit 1) and one per stage (by hand).

    Stage deployments default to ``config``'s section for the stage (the demo's when no config is given),
    so a run triggered from the UI with no changes does what ``xlmflow <stage>`` would.
    """
    params = parameters(run_dir, config)
    found = [
        pipeline.to_deployment(
            name="nightly",
            cron=cron,
            parameters=params["nightly"],
            concurrency_limit=1,
            description="Every stage in order, on the configured corpus.",
        )
    ]
    for s in STAGES:
        found.append(s.flow.to_deployment(name=s.name, parameters=params[s.name], description=s.help))
    return found


def serve(run_dir: str, cron: str | None = NIGHTLY, config: PipelineConfig | None = None) -> None:
    import prefect

    prefect.serve(*deployments(run_dir, cron, config))
