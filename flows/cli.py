"""``xlmflow``: run the whole pipeline or any single stage; every invocation is a Prefect flow run."""

from __future__ import annotations

import argparse
import os
import sys

import xlmflow  # noqa: F401  (sets Prefect's offline defaults before Prefect is imported)

COMMANDS = {
    "run": "run every stage in order on the configured corpus (the bundled demo by default)",
    "status": "show what each stage of a run directory has committed",
    "serve": "serve the pipeline (nightly) and every stage as Prefect deployments from this process, no work pool",
}


def build_parser() -> argparse.ArgumentParser:
    from xlmflow.flows.registry import STAGES

    p = argparse.ArgumentParser(
        prog="xlmflow",
        description="Multilingual corpus -> cross-lingual GPT-style model, "
        "as Prefect flows of cached, retryable tasks. Flags override the --config file.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = {"run": COMMANDS["run"], **{s.name: s.help for s in STAGES}, **COMMANDS}
    for name, text in commands.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument(
            "--run-dir", default="runs/demo", help="run directory (local path or fsspec URL; default runs/demo)"
        )
        if name == "status":
            continue
        sp.add_argument(
            "--config", help="TOML file with one table per stage (see README); without it, the demo's settings"
        )
        sp.add_argument(
            "--parallel",
            action="append",
            metavar="PATH",
            help="an evaluation parallel set: a folder of NAME.train/NAME.eval.parquet, or a Parquet/TSV file with "
            "one column per language (repeatable; added to the configured sets; held out, alignment, evaluation)",
        )
        sp.add_argument("--dask", metavar="ADDRESS", help="run units on a Dask cluster (scheduler address, or 'local')")
        if name == "run":
            sp.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and the ones after it")
            sp.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
            sp.add_argument(
                "--force",
                action="append",
                metavar="STAGE",
                help="rebuild this stage although its output is current (repeatable)",
            )
        if name == "serve":
            sp.add_argument("--cron", default="0 2 * * *", help="the pipeline deployment's schedule (default nightly)")
            sp.add_argument("--no-schedule", action="store_true", help="serve the pipeline unscheduled")
        for stage in STAGES:
            if name in (stage.name, "run", "serve"):
                stage.add_flags(sp.add_argument_group(f"{stage.name} options"))
    return p


def config_from(args):
    """The --config file (or the demo, when neither --config nor --source is given) with the flags laid over it."""
    from xlmflow.flows.config import PipelineConfig
    from xlmflow.flows.registry import STAGES

    user = args.config or getattr(args, "source", None)
    cfg = PipelineConfig.load(args.config) if args.config else PipelineConfig() if user else PipelineConfig.demo()
    cfg.parallel = [*cfg.parallel, *(args.parallel or [])]  # --parallel adds sets to the configured ones
    for stage in STAGES:
        stage.apply_flags(args, getattr(cfg, stage.name))
    return type(cfg).model_validate(cfg.model_dump())  # re-validate what the flags set


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `xlmflow status | head` ends quietly
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return status(args.run_dir)
    from pydantic import ValidationError

    from xlmflow.flows.pipeline import on, pipeline, selected
    from xlmflow.flows.registry import BY_NAME
    from xlmflow.storage import ManifestError
    from xlmflow.tasks.readers import InputError

    try:
        cfg = config_from(args)
        if args.command == "serve":
            from xlmflow.flows.serve import serve

            if not os.environ.get("PREFECT_API_URL"):
                print(
                    "xlmflow serve: PREFECT_API_URL is not set, so runs are reachable only from this process; "
                    "start `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
                    file=sys.stderr,
                )
            serve(args.run_dir, None if args.no_schedule else args.cron, cfg)
            return 0
        if args.command == "run":
            pipeline(
                run_dir=args.run_dir,
                config=cfg,
                dask=args.dask,
                stages=selected(args.only, args.start),
                force=selected(args.force, None) or [],
            )
        else:
            on(BY_NAME[args.command].flow, args.dask)(run_dir=args.run_dir, params=cfg.stage_params(args.command))
    except (InputError, ManifestError, ValidationError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"xlmflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    return status(args.run_dir)


def status(run_dir: str) -> int:
    from xlmflow.flows.registry import STAGES
    from xlmflow.storage import RunDir, read_manifest

    run = RunDir.of(run_dir)
    for stage in (s.name for s in STAGES):
        m = read_manifest(run.stage(stage))
        if m is None:
            print(f"{stage:8s} -")
            continue
        size = sum(f.bytes for f in m.files)
        print(
            f"{stage:8s} {m.fingerprint[:12]}  {len(m.files)} files, {m.rows} rows, {size / 1e6:.1f} MB  "
            f"{', '.join(f'{k}={v}' for k, v in m.stats.items() if isinstance(v, int))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
