"""The langid flow: score (LID) and signal (quality) every ingest unit, filter it, dedup each language,
write the clean partitions.

Scores (the model) and decisions (thresholds, kept languages, quality rules) are
separate units, so changing a threshold re-runs ``langid-filter`` and later tasks
while ``langid-score`` stays cached.
"""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.stage import Stage, incremental, stage_body, task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import langid
from xlmflow.tasks.common import artifacts
from xlmflow.tasks.common.runtime import Ref, logger, run_unit, submit_units
from xlmflow.tasks.langid import LangidParams
from xlmflow.tasks.langid import ui as langid_ui


@flow(name="langid", task_runner=task_runner())
@stage_body("langid")
def langid_flow(run_dir: str, params: LangidParams | None = None) -> Ref:
    run = RunDir.of(run_dir)
    score_units, signal_units, filter_units = langid.plan_task(run, params)
    score_futures = submit_units(langid.score_part, score_units)
    signal_futures = submit_units(langid.signals_part, signal_units)
    filter_refs = [f.result() for f in submit_units(langid.filter_part, filter_units, score_futures, signal_futures)]
    earlier, new, ledger = langid.plan_dedup_task(run, params, filter_units, filter_refs, incremental(run))
    dedup_refs = [f.result() for f in submit_units(langid.dedup_lang, earlier)]  # the new ones read their indexes
    dedup_refs += [f.result() for f in submit_units(langid.dedup_lang, new)]
    dedup_units = earlier + new
    clean_units = langid.plan_clean_task(run, dedup_units, dedup_refs)
    clean_refs = [f.result() for f in submit_units(langid.clean_lang, clean_units)]
    refs = (
        [f.result() for f in score_futures]
        + [f.result() for f in signal_futures]
        + filter_refs
        + dedup_refs
        + clean_refs
    )
    ref = run_unit(langid.commit_task, langid.stage_for(run, params, refs), refs, ledger)
    artifacts.publish_task(langid.STAGE, run_dir, langid_ui.report)
    logger().info("langid: %d ingest units scored and filtered, %d languages clean", len(score_units), len(clean_refs))
    return ref


def _flags(g) -> None:
    g.add_argument("--lang-threshold", action="append", metavar="XX=P", help="per-language threshold (repeatable)")
    g.add_argument("--keep-langs", help="comma-separated languages to keep (default: all)")
    g.add_argument("--no-near-dedup", action="store_true", help="exact dedup only")


def _apply(args, params: LangidParams) -> None:
    if getattr(args, "lang_threshold", None):
        params.thresholds = {**params.thresholds, **_pairs(args.lang_threshold)}
    if getattr(args, "keep_langs", None):
        params.keep_langs = [x.strip() for x in args.keep_langs.split(",") if x.strip()]
    if getattr(args, "no_near_dedup", False):
        params.dedup.near = False


def _pairs(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        lang, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--lang-threshold {item!r}: write it as LANG=PROBABILITY, e.g. hr=0.3")
        out[lang.strip()] = float(value)
    return out


STAGE = Stage(
    name="langid",
    report=langid_ui.report,
    flow=langid_flow,
    params=LangidParams,
    reads=langid.READS,
    help="fastText language ID, per-language thresholds, quality filters, exact and MinHash dedup",
    flags={
        "--lid-model": "model_path",
        "--threshold": "threshold",
        "--mismatch": "mismatch",
        "--min-lang-docs": "min_lang_docs",
    },
    extra_flags=_flags,
    apply_extra=_apply,
    parallel_field="holdout",
)
