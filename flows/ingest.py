"""The ingest flow: plan one unit per input file, ingest each as a task, commit the stage."""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import ingest
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, run_unit, submit_units
from xlmflow.tasks.ingest import IngestParams, Source
from xlmflow.tasks.ingest import ui as ingest_ui


@flow(name="ingest", task_runner=task_runner())
@stage_body("ingest")
def ingest_flow(run_dir: str, params: IngestParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    units = ingest.plan_task(run, params)
    refs = [f.result() for f in submit_units(ingest.ingest_file, units)]
    ref = run_unit(ingest.commit_task, ingest.stage_for(run, params, refs), refs)
    artifacts.publish_task(ingest.STAGE, run_dir, ingest_ui.report)
    return ref


def _source_flags(g) -> None:
    g.add_argument(
        "--source",
        action="append",
        help="file, folder, glob, fsspec URL or hf:NAME (repeatable; replaces "
        "the configured sources, and with no --config the demo settings too)",
    )
    g.add_argument("--format", choices=["auto", "text", "jsonl", "parquet", "hf-disk", "hf"], default="auto")
    g.add_argument("--text-field", default="text", help="JSON field / column holding the text")
    g.add_argument("--lang-field", default="lang", help="JSON field / column holding the claimed language")
    g.add_argument("--lang", help="claimed language for records that carry none")
    g.add_argument("--paragraphs", action="store_true", help="text files: one document per blank-line paragraph")
    g.add_argument("--split", help="datasets: split to read (default: all)")


def _apply_sources(args, params: IngestParams) -> None:
    if getattr(args, "source", None):
        params.sources = [
            Source(
                path=s,
                format=args.format,
                text_field=args.text_field,
                lang_field=args.lang_field,
                lang=args.lang,
                paragraphs=args.paragraphs,
                split=args.split,
            )
            for s in args.source
        ]


STAGE = Stage(
    name="ingest",
    report=ingest_ui.report,
    flow=ingest_flow,
    params=IngestParams,
    reads=ingest.READS,
    help="read text/JSONL/Parquet/datasets into normalised Parquet documents",
    flags={"--bad-records": "bad_records"},
    extra_flags=_source_flags,
    apply_extra=_apply_sources,
)
