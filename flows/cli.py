"""``xlmflow``: run the whole pipeline or any single stage; every invocation is a Prefect flow run."""

from __future__ import annotations

import argparse
import os
import sys

import xlmflow  # noqa: F401  (sets Prefect's offline defaults before Prefect is imported)

COMMANDS = {
    "run": "run every stage in order on the configured corpus (the bundled demo by default)",
    "status": "show what each stage of a run directory has committed",
    "deployments": "write deployments/prefect.yaml (work pool + worker deployments) from the stage registry",
    "config": "config show: print the configuration a run directory records (what its next command starts from)",
    "serve": "serve the pipeline (nightly) and every stage as Prefect deployments from this process, no work pool",
    "rollback": "make an earlier model (versions/train, kept by incremental runs) the run's model again",
    "translate": "translate lines (a file or standard input) with a fine-tuned model, one translation per line",
    "classify": "classify lines (a file or standard input) with a fine-tuned classifier, one class per line",
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
        sp.add_argument("--debug", action="store_true", help="show Prefect's logs, and the traceback of an error")
        sp.add_argument(
            "--config",
            help="TOML file with one table per stage (see README), laid over the run directory's recorded "
            "configuration; a new run directory with neither this nor --source takes the demo's settings",
        )
        if name == "config":
            sp.add_argument("action", choices=["show"], help="show: print the recorded (or would-be) configuration")
        if name in ("status", "config"):
            continue
        if name in ("rollback", "translate", "classify"):
            _model_options(sp, name)
            continue
        sp.add_argument("--quiet", action="store_true", help="no progress display and no status table")
        sp.add_argument("--wait", action="store_true", help="if another run holds the run directory, wait for it")
        sp.add_argument("--verbose", action="store_true", help="Prefect's logs instead of the progress display")
        sp.add_argument(
            "--parallel",
            action="append",
            metavar="PATH",
            help="an evaluation parallel set: a folder of NAME.train/NAME.eval.parquet (or .tsv), or a Parquet/TSV "
            "file with one column per language (repeatable; added to the configured sets; held out, alignment, "
            "evaluation)",
        )
        sp.add_argument("--dask", metavar="ADDRESS", help="run units on a Dask cluster (scheduler address, or 'local')")
        if name not in ("deployments",):
            sp.add_argument(
                "--incremental",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="append new input files as an increment (deduplicated against the kept documents), keep the "
                "vocabulary, add shards, continue training from the last model; recorded for the run directory "
                "(--no-incremental: rebuild everything from the inputs)",
            )
        if name == "run":
            sp.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and the ones after it")
            sp.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
            sp.add_argument(
                "--force",
                action="append",
                metavar="STAGE",
                help="rebuild this stage although its output is current (repeatable)",
            )
        elif name not in COMMANDS:
            sp.add_argument(
                "--force",
                action="store_true",
                help="rebuild the stage although its output is current (vocab: also in an incremental run, where "
                "the vocabulary is otherwise kept)",
            )
        if name == "deployments":
            sp.add_argument("--cron", default="0 2 * * *", help="the pipeline deployment's schedule (default nightly)")
            sp.add_argument("--output", default="-", help="file to write (default: standard output)")
            continue
        if name == "serve":
            sp.add_argument("--cron", default="0 2 * * *", help="the pipeline deployment's schedule (default nightly)")
            sp.add_argument("--no-schedule", action="store_true", help="serve the pipeline unscheduled")
        for stage in STAGES:
            if name in (stage.name, "run", "serve"):
                stage.add_flags(sp.add_argument_group(f"{stage.name} options"))
    return p


def _model_options(sp: argparse.ArgumentParser, name: str) -> None:
    """The options of the commands that use a trained model: rollback, translate, classify."""
    if name == "rollback":
        sp.add_argument("--to", help="the version (v0001, or 1; default: the newest that is not the current model)")
        sp.add_argument("--list", action="store_true", help="list the kept versions and change nothing")
        return
    if name in ("translate", "classify"):
        sp.add_argument("file", nargs="?", help="a text file, one segment per line (default: standard input)")
        sp.add_argument("--batch-size", type=int, default=32, help="lines at once")
    if name == "translate":
        sp.add_argument("--model", help="a fine-tuned model folder (default: <run-dir>/finetune/translate)")
        sp.add_argument("--src", required=True, help="the lines' language (en)")
        sp.add_argument("--tgt", required=True, help="the language to translate into (fr)")
        sp.add_argument("--beams", type=int, default=1, help="beam search with N beams (default 1: greedy)")
        sp.add_argument("--max-new-tokens", type=int, default=64, help="longest translation, in tokens")
        return
    if name == "classify":
        sp.add_argument(
            "--model", help="a fine-tuned classifier (default: the run's one finetune/classify-<set> folder)"
        )
        sp.add_argument("--lang", required=True, help="the lines' language (any of the model's: zero-shot)")
        return


def config_from(args):
    """The run directory's recorded configuration (the demo's for a new one, unless --config or --source says
    it is a user's), with the --config file and then the flags laid over it."""
    from xlmflow.flows.config import PipelineConfig
    from xlmflow.flows.registry import STAGES

    cfg = PipelineConfig.for_run(args.run_dir, args.config, user=bool(getattr(args, "source", None)))
    cfg.parallel = [*cfg.parallel, *(getattr(args, "parallel", None) or [])]  # added to the configured sets
    if getattr(args, "incremental", None) is not None:
        cfg.incremental = args.incremental
    for stage in STAGES:
        stage.apply_flags(args, getattr(cfg, stage.name))
    return type(cfg).model_validate(cfg.model_dump())  # re-validate what the flags set


def main(argv: list[str] | None = None) -> int:
    """Run a command; a failure is one line on stderr (``--debug``: the traceback) and exit status 1."""
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `xlmflow status | head` ends quietly
    raw = sys.argv[1:] if argv is None else argv
    chatty = {"--verbose", "--debug", "serve"} & set(raw)
    if not chatty:  # before Prefect configures its logging: the terminal shows progress, the UI keeps every log
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    args = build_parser().parse_args(argv)
    try:
        return _command(args)
    except KeyboardInterrupt:
        print(f"xlmflow {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"xlmflow {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 1


def one_line(e: BaseException) -> str:
    """The error as one line: its type when the message does not say it, the first line of the message."""
    text = str(e).strip() or type(e).__name__
    first, *more = text.splitlines()
    ours = type(e).__module__.startswith("xlmflow") or type(e) in (RuntimeError, ValueError)
    prefix = "" if ours else f"{type(e).__name__}: "
    return prefix + first + (" (more with --debug)" if more else "")


def _command(args) -> int:
    from contextlib import nullcontext

    if args.command in ("translate", "classify"):
        return apply_model(args)
    if args.command == "status":
        return status(args.run_dir, config_from(args))
    if args.command == "rollback":
        return rollback(args)
    cfg = config_from(args)
    if args.command == "config":
        return show_config(args.run_dir, cfg)
    if args.command == "deployments":
        from xlmflow.flows.serve import prefect_yaml

        text = prefect_yaml(args.run_dir, args.cron, cfg)
        if args.output == "-":
            sys.stdout.write(text)
        else:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        return 0
    if args.command == "serve":
        from xlmflow.flows.serve import serve

        if not os.environ.get("PREFECT_API_URL"):
            print(
                "xlmflow serve: PREFECT_API_URL is not set, so runs are reachable only from this process; "
                "start `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
                file=sys.stderr,
            )
        serve(args.run_dir, None if args.no_schedule else args.cron, cfg, args.incremental is not False)
        return 0
    from xlmflow.flows.pipeline import on, pipeline, selected
    from xlmflow.flows.registry import BY_NAME
    from xlmflow.storage import RunDir
    from xlmflow.storage.lock import run_lock
    from xlmflow.tasks.common.progress import PlainProgress, TerminalProgress

    if args.quiet or args.verbose or args.debug:
        shown = nullcontext()
    else:  # bars at a terminal; one plain line per event into a log file, cron's mail, CI
        shown = TerminalProgress() if sys.stdout.isatty() and sys.stderr.isatty() else PlainProgress(sys.stdout)
    with run_lock(RunDir.of(args.run_dir).root, wait=args.wait), shown, _no_heartbeats_without_a_server():
        cfg.record(args.run_dir)  # under the lock: what this command runs with is the run's configuration now
        if args.command == "run":
            pipeline(
                run_dir=args.run_dir,
                config=cfg,
                dask=args.dask,
                stages=selected(args.only, args.start),
                force=selected(args.force, None) or [],
            )
        else:
            if args.force:
                from xlmflow.tasks.common.runtime import invalidate_stage

                invalidate_stage(args.run_dir, args.command)
            on(BY_NAME[args.command].flow, args.dask)(run_dir=args.run_dir, params=cfg.stage_params(args.command))
    return 0 if args.quiet else status(args.run_dir, cfg)


def _no_heartbeats_without_a_server():
    """Flow-run heartbeats tell a Prefect server that a run whose process died has crashed. The temporary
    server of a run without ``PREFECT_API_URL`` dies with the process, so they tell no one there, yet each
    (sub)flow run waits up to a second for its heartbeat thread on exit (7 flow runs per pipeline run)."""
    from contextlib import nullcontext

    if os.environ.get("PREFECT_API_URL"):
        return nullcontext()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def apply_model(args) -> int:
    """``xlmflow translate`` / ``classify``: read the lines, write one answer per line to standard output."""
    from xlmflow.storage import RunDir
    from xlmflow.tasks.finetune import inference

    stage = RunDir.of(args.run_dir).stage("finetune")
    if args.model:
        model_dir = args.model
    elif args.command == "translate":
        model_dir = stage.child("translate").uri
    else:
        found = [n for n in stage.subfolders() if n.startswith("classify-")] if stage.exists() else []
        if len(found) != 1:
            which = f"it holds {', '.join(found)}" if found else "it holds none"
            raise ValueError(f"{stage}: give the classifier with --model ({which})")
        model_dir = stage.child(found[0]).uri
    model, tok = inference.load(model_dir, classifier=args.command == "classify")
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        lines = sys.stdin.read().splitlines()
    if args.command == "translate":
        a = args
        out = inference.translate_lines(model, tok, lines, a.src, a.tgt, a.beams, a.max_new_tokens, a.batch_size)
    else:
        out = inference.classify_lines(model, tok, lines, args.lang, args.batch_size)
    if out:
        print("\n".join(out))
    return 0


def show_config(run_dir: str, cfg) -> int:
    """Print the configuration ``run_dir`` records, with the --config file and flags of this command laid over
    it (a new run directory: what its first command would record)."""
    from xlmflow.storage import RunDir, read_record, record_text

    if read_record(RunDir.of(run_dir)) is None:
        print(f"# {run_dir} records no configuration yet: its first command would record this")
    print(record_text(cfg.model_dump(mode="json")), end="")
    return 0


def rollback(args) -> int:
    """List the kept models, or make one of them the run's model again (under the run directory's lock)."""
    from xlmflow.flows.config import PipelineConfig
    from xlmflow.storage import RunDir, read_manifest
    from xlmflow.storage.increments import versions
    from xlmflow.storage.lock import run_lock
    from xlmflow.tasks.train.stage import STAGE, rollback

    run = RunDir.of(args.run_dir)
    if args.list:
        current = read_manifest(run.stage(STAGE))
        for v in versions(run, STAGE):
            m = read_manifest(v.loc)
            here = "  (current)" if current and current.fingerprint == v.fingerprint else ""
            steps = m.stats.get("total_steps", m.stats.get("steps"))
            print(f"{v.name}  {steps} steps through increment {m.params.get('increment', 1)}{here}")
        return 0
    keep = PipelineConfig.for_run(args.run_dir).train.keep_versions
    with run_lock(run.root, wait=False):
        v = rollback(run, args.to, keep)
    m = read_manifest(run.stage(STAGE))
    print(
        f"train: rolled back to {v.name} ({m.stats.get('total_steps', m.stats.get('steps'))} steps through increment "
        f"{m.params.get('increment', 1)}); finetune and evaluate are stale until the next run"
    )
    return 0


def status(run_dir: str, config=None) -> int:
    """What each stage has committed, and whether the next run would rebuild it and why (code, parameters
    of ``config`` (the run's recorded configuration by default), or an upstream stage changed)."""
    from xlmflow.flows.config import PipelineConfig
    from xlmflow.flows.registry import STAGES
    from xlmflow.storage import RunDir, code_version, read_manifest
    from xlmflow.tasks.common.runtime import stale_reasons

    config = config or PipelineConfig.for_run(run_dir)
    run = RunDir.of(run_dir)
    manifests = {s.name: read_manifest(run.stage(s.name)) for s in STAGES}
    current = {name: m.fingerprint if m else None for name, m in manifests.items()}
    stale: set[str] = set()
    for s in STAGES:
        m = manifests[s.name]
        if m is None:
            print(f"{s.name:8s} -        not built")
            stale.add(s.name)
            continue
        settings = config.stage_params(s.name).model_dump(mode="json")
        reasons = stale_reasons(m, code_version(f"xlmflow.tasks.{s.name}"), settings, current, section=s.name)
        reasons += [f"upstream {r} is stale" for r in s.reads if r in stale and not any(r in x for x in reasons)]
        state = "stale  " if reasons else "current"
        if config.incremental and s.name == "vocab":  # kept as it is by incremental runs
            state, reasons = "frozen ", []
        stale |= {s.name} if reasons else set()
        size = sum(f.bytes for f in m.files)
        counts = ", ".join(f"{k}={v}" for k, v in m.stats.items() if isinstance(v, int))
        print(
            f"{s.name:8s} {state}  {m.fingerprint[:12]}  {len(m.files)} files, "
            f"{m.rows} rows, {size / 1e6:.1f} MB  {counts}"
        )
        if reasons:
            print(f"{'':8s} why: {'; '.join(reasons)}")
    if config.incremental:
        print(incremental_preview(run, config))
    return 0


def _size(uri: str) -> int:
    from xlmflow.storage import Location

    loc = Location(uri)
    return loc.fs.size(loc.path) if loc.fs.isfile(loc.path) else 0


def incremental_preview(run, config) -> str:
    """One paragraph: what the next incremental run would take in and train."""
    from xlmflow.tasks import ingest
    from xlmflow.tasks.langid.increments import preview
    from xlmflow.tasks.train.incremental import estimated_steps

    try:
        units = ingest.plan(run, config.ingest)
    except Exception as e:  # a source that cannot be listed: say so, status still shows the stages
        return f"incremental: cannot list the inputs ({str(e).splitlines()[0]})"
    p = preview(run, units)
    if p is None:
        return "incremental: no increments yet; the next run makes the first of every input"
    fate = "left out of the shards: drop_removed" if config.shard.drop_removed else "their documents stay"
    if not (p["new"] or p["reread"]):
        gone = f"; {len(p['removed'])} input(s) gone from the sources ({fate}): {', '.join(p['removed'])}"
        return f"incremental: no new input files{gone if p['removed'] else ''}"
    seen = sum(_size(u.input("input").uri) for u in units if u.name in p["seen"])
    steps = estimated_steps(run, config.train, seen, p["bytes"])
    lines = [
        f"incremental: the next run adds {len(p['new'])} new input file(s) ({', '.join(p['new'][:5])}), reads "
        f"{len(p['reread'])} again (bytes, or ingest's settings, changed), {p['bytes'] / 1e6:.1f} MB"
        + (f", {p['documents']} documents already ingested" if p["documents"] else ""),
        f"{'':13s}training continues for about {steps} steps" if steps else f"{'':13s}training starts from step 0",
    ]
    if p["removed"]:
        gone = ", ".join(p["removed"])
        lines.append(f"{'':13s}{len(p['removed'])} input(s) gone from the sources ({fate}): {gone}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
