"""The langid flow under a real (temporary) Prefect API: a new threshold re-runs the filter, never the model."""

import json
from pathlib import Path

import polars as pl
from helpers import runs_of, task_states
from test_langid import DE, EN, FR, ZH, make_ingest

from xlmflow.flows.langid import langid_flow
from xlmflow.storage import RunDir, load_output, partitions
from xlmflow.tasks.langid import LangidParams, label_texts


def test_changing_a_threshold_reruns_filter_not_model(prefect_api, tmp_path):
    run_dir = str(tmp_path / "run")
    make_ingest(
        run_dir,
        tmp_path,
        {
            "en": [(t, "en") for t in EN],
            "fr": [(t, "fr") for t in FR],
            "de": [(t, "de") for t in DE],
            "zh": [(t, "zh") for t in ZH],
        },
    )
    params = LangidParams(min_lang_docs=1)
    first = task_states(langid_flow(run_dir, params, return_state=True))
    stage = load_output(RunDir.of(run_dir).stage("langid"), "langid")
    assert set(partitions(stage, "clean")) == {"de", "en", "fr", "zh"}
    first_stats = json.loads((Path(run_dir) / "langid" / "stats.json").read_text())
    assert first[("langid-score", "Completed")] == 4 and first[("langid-commit", "Completed")] == 1
    scores = sorted(Path(run_dir, "langid", "scores").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in scores}
    stricter = task_states(langid_flow(run_dir, params.model_copy(update={"threshold": 0.9}), return_state=True))
    assert runs_of(stricter, "langid-score") == 0
    assert stricter[("langid-filter", "Completed")] == 4 and stricter[("langid-commit", "Completed")] == 1
    assert {p: p.stat().st_mtime_ns for p in scores} == before, "the model's scores must not be rewritten"
    stage = load_output(RunDir.of(run_dir).stage("langid"), "langid")
    # the languages the in-memory path keeps at 0.9 are exactly the flow's clean partitions
    texts = EN + FR + DE + ZH
    kept = label_texts(texts, params.model_copy(update={"threshold": 0.9})).filter(pl.col("reason").is_null())
    assert stage.params["threshold"] == 0.9 and set(partitions(stage, "clean")) == set(kept["lang"]) != set()
    stats = json.loads((Path(run_dir) / "langid" / "stats.json").read_text())
    assert stats["documents"]["scored"] == first_stats["documents"]["scored"] == len(texts)
    assert stats["documents"]["clean"] + stats["documents"]["rejected"] == len(texts)  # nothing lost uncounted
    low = stats["rejected_by_reason"].get("lid_low_confidence", 0)
    assert low > first_stats["rejected_by_reason"].get("lid_low_confidence", 0)
    assert stats["documents"]["clean"] == first_stats["documents"]["clean"] - (
        low - first_stats["rejected_by_reason"].get("lid_low_confidence", 0)
    )
    from prefect import get_client

    from xlmflow.tasks.common.artifacts import key_for

    key = key_for("langid", RunDir.of(run_dir).root.uri)
    with get_client(sync_client=True) as client:
        mine = [a for a in client.read_artifacts() if a.key == key]
    # published on both runs (the second reran the filter, not the model), with the kept languages first
    assert len(mine) == 2 and all("xychart-beta" in a.data and "| language | clean |" in a.data for a in mine)
    latest = max(mine, key=lambda a: a.created).data
    assert "lid_low_confidence" in latest and "Claimed vs detected" in latest
    with get_client(sync_client=True) as client:
        names = {r.name for r in client.read_task_runs()}
    units = sorted(p.name for p in Path(run_dir, "langid", "scores").iterdir() if not p.name.startswith("."))
    assert {f"langid-score-{u}" for u in units} <= names, "task runs are named after their unit"
