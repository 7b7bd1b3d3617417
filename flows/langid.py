"""The langid flow: score (LID) and signal (quality) every ingest unit, filter it, dedup each language, write the clean partitions.

Scores (the model) and decisions (thresholds, kept languages, quality rules) are
separate units, so changing a threshold re-runs ``langid-filter`` and later tasks
while ``langid-score`` stays cached.
"""

from __future__ import annotations

from prefect import flow

from xlmflow.flows.config import task_runner
from xlmflow.storage import RunDir
from xlmflow.tasks import langid
from xlmflow.tasks.langid import LangidParams
from xlmflow.tasks.runtime import Ref, logger, run_unit, submit_units



@flow(name="langid", task_runner=task_runner())
def langid_flow(run_dir: str, params: LangidParams | None = None) -> Ref:
    params = params or LangidParams()
    run = RunDir.of(run_dir)
    score_units, signal_units, filter_units = langid.plan_task(run, params)
    score_futures = submit_units(langid.score_part, score_units)
    signal_futures = submit_units(langid.signals_part, signal_units)
    filter_refs = [f.result() for f in submit_units(langid.filter_part, filter_units, score_futures, signal_futures)]
    dedup_units = langid.plan_dedup_task(run, params, filter_refs)
    dedup_refs = [f.result() for f in submit_units(langid.dedup_lang, dedup_units)]
    clean_units = langid.plan_clean_task(run, dedup_units, dedup_refs)
    clean_refs = [f.result() for f in submit_units(langid.clean_lang, clean_units)]
    refs = [f.result() for f in score_futures] + [f.result() for f in signal_futures] + filter_refs + dedup_refs + clean_refs
    ref = run_unit(langid.commit_task, langid.stage_for(run, params, refs), refs)
    logger().info("langid: %d ingest units scored and filtered, %d languages clean", len(score_units), len(clean_refs))
    return ref
