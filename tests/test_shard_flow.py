"""The shard flow under a real (temporary) Prefect API: one task per shard, exact caching, partial rebuilds."""

from pathlib import Path

from helpers import runs_of, task_states, write_langid_stage
from shard_fixtures import corpus, make_inputs

from xlmflow.flows.shard import shard_flow
from xlmflow.storage import RunDir, load_output
from xlmflow.tasks.shard import ShardParams

PARAMS = ShardParams(shard_docs=100, min_valid_docs=5)


def test_flow_one_task_per_shard_cached_rerun_changed_language_rebuilt_alone(prefect_api, run_dir):
    docs = corpus({"en": 250, "fr": 120})
    make_inputs(run_dir, docs)
    first = task_states(shard_flow(run_dir=run_dir, params=PARAMS, return_state=True))
    stage = load_output(RunDir.of(run_dir).stage("shard"), "shard")
    shards = [f for f in stage.files if f.path.endswith(".parquet")]
    assert first[("shard-file", "Completed")] == len(shards) == stage.stats["units"] == 3 + 2 + 2
    assert first[("shard-commit", "Completed")] == 1

    again = task_states(shard_flow(run_dir=run_dir, params=PARAMS, return_state=True))
    assert runs_of(again, "shard-file") == runs_of(again, "shard-commit") == 0

    docs["fr"][7] = "un texte tout nouveau"
    write_langid_stage(run_dir, docs)
    en_before = {p: p.stat().st_mtime_ns for p in Path(run_dir, "shard").rglob("*en-*.parquet")}
    changed = task_states(shard_flow(run_dir=run_dir, params=PARAMS, return_state=True))
    n_en = sum("/en-" in f.path for f in shards)
    assert runs_of(changed, "shard-file") == changed[("shard-file", "Completed")] == len(shards) - n_en
    assert en_before == {p: p.stat().st_mtime_ns for p in Path(run_dir, "shard").rglob("*en-*.parquet")}
    assert load_output(RunDir.of(run_dir).stage("shard")).fingerprint != stage.fingerprint
