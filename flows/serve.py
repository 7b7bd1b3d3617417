"""The deployments, from the registry: ``xlmflow serve`` serves the pipeline (nightly, one run at a time) and
every stage straight from this process (``flow.to_deployment`` + ``prefect.serve``): no work pool, no worker.
Trigger them from the UI or ``prefect deployment run 'ingest/ingest'``. ``deployments/prefect.yaml`` (work pool +
worker, the route for production) is written by ``xlmflow deployments`` from the same registry and the same
parameters (a test fails when the committed file is not what the command writes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import yaml

from xlmflow.flows.config import PipelineConfig
from xlmflow.flows.pipeline import pipeline
from xlmflow.flows.registry import STAGES

NIGHTLY = "0 2 * * *"
PREFECT_VERSION = "3.9.1"  # the oldest Prefect release xlmflow supports (pyproject.toml), for prefect.yaml


def parameters(run_dir: str, config: PipelineConfig | None = None, incremental: bool = True) -> dict[str, dict]:
    """Each deployment's default parameters by name (``nightly`` and one per stage): the run directory and the
    configuration (the run directory's recorded one when none is given) written out in full, so a run form
    shows real values (a ``package:`` path for the bundled corpus, never this machine's absolute paths).
    The nightly run is ``incremental`` unless told otherwise: a growing corpus appends, it is not rebuilt.
    ``deployments/prefect.yaml`` holds the same (:func:`prefect_yaml`)."""
    config = config or PipelineConfig.for_run(run_dir)
    nightly = config.model_dump(mode="json") | {"incremental": incremental}
    found = {"nightly": {"run_dir": run_dir, "config": nightly}}
    for s in STAGES:
        found[s.name] = {"run_dir": run_dir, "params": config.stage_params(s.name).model_dump(mode="json")}
    return found


def deployments(
    run_dir: str, cron: str | None = NIGHTLY, config: PipelineConfig | None = None, incremental: bool = True
) -> list:
    """One deployment for the pipeline (scheduled by ``cron``, concurrency limit 1, ``incremental``) and one per
    stage (by hand).

    Stage deployments default to ``config``'s section for the stage (the run's recorded configuration when
    none is given), so a run triggered from the UI with no changes does what ``xlmflow <stage>`` would.
    """
    params = parameters(run_dir, config, incremental)
    found = [
        pipeline.to_deployment(
            name="nightly",
            cron=cron,
            parameters=params["nightly"],
            concurrency_limit=1,
            description="Every stage in order, on the configured corpus"
            + (" (incremental: new files are appended, training continues)." if incremental else "."),
        )
    ]
    for s in STAGES:
        found.append(s.flow.to_deployment(name=s.name, parameters=params[s.name], description=s.help))
    return found


def serve(
    run_dir: str, cron: str | None = NIGHTLY, config: PipelineConfig | None = None, incremental: bool = True
) -> None:
    """Serve the deployments until SIGINT or SIGTERM, which stop this process at once: one line, exit status 0,
    whether or not the API server is still up.

    Left to Prefect, a stop is slow or lost: a process started in the background (``xlmflow serve &``) ignores
    SIGINT, and the runner's shutdown talks to the API (to pause the schedules), retrying for about a minute when
    the server has already gone, then ends in a traceback. Here both signals run :func:`_stop`; the schedules
    stay as they are (``pause_on_shutdown=False``), so the next ``xlmflow serve`` goes on with them.
    """
    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args, **kwargs) -> None:  # Runner.start installs this for SIGTERM
            _stop(signal.SIGTERM)

    found = deployments(run_dir, cron, config, incremental)
    runner = _Runner(pause_on_shutdown=False)
    for d in found:
        runner.add_deployment(d)
    signal.signal(signal.SIGINT, _stop)  # also where the shell started us ignoring it; asyncio keeps this handler
    signal.signal(signal.SIGTERM, _stop)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in found)
    print(f"xlmflow serve: serving {names} for {run_dir}; stop with Ctrl-C or kill", flush=True)
    asyncio.run(runner.start())


def _stop(signum: int, _frame=None) -> None:
    """Stop ``xlmflow serve`` now: terminate its child processes (flow runs: one in flight goes on from its last
    committed unit or checkpoint when run again; one just finished may not have exited yet), say so in one line,
    exit 0. Nothing here waits on the API server."""
    import psutil

    runs = psutil.Process().children(recursive=True)
    for p in runs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(runs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    what = f"; terminated {len(runs)} flow-run process(es) (a run cut short goes on when run again)" if runs else ""
    print(f"xlmflow serve: stopped on {signal.Signals(signum).name}{what}", flush=True)
    os._exit(0)  # not sys.exit: the runner's shutdown would wait on the API


PREFECT_YAML_HEADER = """\
# Prefect deployments for xlmflow, written by `xlmflow deployments` from the stage registry (do not edit by
# hand: a test fails when this file is not what the command writes). From the repository root, with a Prefect
# server running (`prefect server start`, PREFECT_API_URL set) and a process work pool:
#   prefect work-pool create xlmflow-local --type process
#   prefect deploy --all --prefect-file deployments/prefect.yaml
#   prefect worker start --pool xlmflow-local
# The worker runs flows from the folder it was started in (the repository root), in the same virtual
# environment. Each deployment's parameters are {what} written out; for your own run directory write
# your own file: `xlmflow deployments --run-dir URL [--config FILE] --output my-prefect.yaml`.
# `package:data/...` names the bundled demo.
"""


def prefect_yaml(run_dir: str, cron: str = NIGHTLY, config: PipelineConfig | None = None) -> str:
    """``deployments/prefect.yaml`` for ``run_dir``: the pipeline (scheduled by ``cron``, one run at a time)
    and one deployment per registry stage, with :func:`parameters` as their defaults and each stage's
    description naming what it reads (``Stage.reads``)."""
    params = parameters(run_dir, config)

    def pool() -> dict:  # a new dict each time: YAML would write a shared one as an anchor
        return {"name": "xlmflow-local", "work_queue_name": "default", "job_variables": {}}

    nightly = {
        "name": "nightly",
        "description": "The whole pipeline, every night, on the run directory's configured corpus (incremental: new "
        "files are appended, training continues).",
        "entrypoint": "flows/pipeline.py:pipeline",
        "parameters": params["nightly"],
        "concurrency_limit": 1,
        "schedules": [{"cron": cron, "timezone": "UTC", "active": True}],
        "work_pool": pool(),
    }
    stages = []
    for s in STAGES:
        needs = f" (needs committed {', '.join(s.reads)} in run_dir)" if s.reads else ""
        stages.append(
            {
                "name": s.name,
                "description": f"{s.help[0].upper()}{s.help[1:]}{needs}.",
                "entrypoint": f"flows/{s.name}.py:{s.flow.fn.__name__}",
                "parameters": params[s.name],
                "work_pool": pool(),
            }
        )
    spec = {"name": "xlmflow", "prefect-version": PREFECT_VERSION, "build": None, "push": None, "pull": None}
    spec["deployments"] = [nightly, *stages]
    what = "the demo's settings" if config is None or config == PipelineConfig.demo() else "this run's settings"
    return PREFECT_YAML_HEADER.format(what=what) + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=110)
