"""The vocab flow under a real (temporary) Prefect API: one unit, cached rerun, the report artifact."""

from helpers import runs_of, task_states, write_langid_stage
from test_vocab import LANGS, corpus, parallel, params  # noqa: F401  (fixture)

from xlmflow.flows.vocab import vocab_flow
from xlmflow.storage import RunDir, load_output


def test_flow_builds_caches_and_publishes_report(prefect_api, run_dir, parallel):  # noqa: F811
    from prefect import get_client

    write_langid_stage(run_dir, corpus())
    first = task_states(vocab_flow(run_dir=run_dir, params=params(parallel), return_state=True))
    assert first[("vocab-build", "Completed")] == 1
    m = load_output(RunDir.of(run_dir).stage("vocab"), "vocab")
    assert m.stats["languages"] == LANGS
    second = task_states(vocab_flow(run_dir=run_dir, params=params(parallel), return_state=True))
    assert runs_of(second, "vocab-build") == 0
    from xlmflow.tasks.common.artifacts import key_for

    key = key_for("vocab", RunDir.of(run_dir).root.uri)
    assert key.startswith("vocab-run-") and key == key.lower()
    with get_client(sync_client=True) as client:
        mine = [a for a in client.read_artifacts() if a.key == key]
    # the cached rerun publishes the same content again, under a key of this run directory only
    assert len(mine) == 2 and mine[0].data == mine[1].data and "cross-language pairs" in mine[0].data
