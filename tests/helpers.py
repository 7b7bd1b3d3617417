"""Small helpers shared by the tests: writing inputs, reading what a flow run did."""

from __future__ import annotations

from collections import Counter


def task_states(flow_state, timeout: float = 30, settle: float = 0.6) -> Counter:
    """Counter of (task name prefix, final state name) for one flow run.

    The API records task runs and their states asynchronously (from events), so this polls until every task
    run of the flow run has a final state and none was added or changed for ``settle`` seconds (the last task
    run of a flow, its commit, can be recorded after the others are final), or ``timeout`` seconds pass.
    """
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.time() + timeout
    seen, since = None, time.time()
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            now, key = time.time(), sorted((str(r.id), r.state.name if r.state else "") for r in runs)
            if key != seen:
                seen, since = key, now
            final = all(r.state is not None and r.state.is_final() for r in runs)
            if (final and now - since >= settle) or now > deadline:
                return Counter((task_name(r.name), r.state.name if r.state else "Pending") for r in runs)
            time.sleep(0.2)


def runs_of(states: Counter, task: str) -> int:
    """How many runs of ``task`` (in any state) a :func:`task_states` counter holds."""
    return sum(n for (name, _), n in states.items() if name == task)


def task_name(run_name: str) -> str:
    """The task of a task run: unit runs are ``<task>-<unit name>``, others ``<task>-<3 hex digits>``."""
    from xlmflow.tasks.common.runtime import UNIT_TASKS

    for name in sorted(UNIT_TASKS, key=len, reverse=True):
        if run_name.startswith(name + "-"):
            return name
    return run_name.rsplit("-", 1)[0]


def write_langid_stage(run_dir: str, docs_by_lang: dict[str, list[str]]):
    """A committed ``langid`` stage as the langid stage leaves it, for tests of later stages.

    Clean documents live in ``langid/clean/lang=<xx>/part-00000.parquet`` (columns at
    least ``doc_id``, ``text``, ``lang``), one unit folder per language.
    """
    import pyarrow as pa

    from xlmflow.storage import RunDir, code_version, write_table
    from xlmflow.tasks.common.runtime import Unit, commit_stage, ensure, stage_unit

    run = RunDir.of(run_dir)
    refs = []
    for lang, texts in sorted(docs_by_lang.items()):
        loc = run.unit("langid", f"lang={lang}", group="clean")
        unit = Unit(stage="langid", name=f"lang={lang}", out=loc.uri, code_version="test", params={"texts": texts})
        table = pa.table(
            {
                "doc_id": [f"{lang}-{i}" for i in range(len(texts))],
                "text": pa.array(texts, pa.large_string()),
                "lang": [lang] * len(texts),
            }
        )

        def build(aside, table=table):
            write_table(aside.path("part-00000.parquet"), table)
            return {"documents": table.num_rows}

        refs.append(ensure(unit, build))
    return commit_stage(stage_unit(run.stage("langid").uri, "langid", refs, code_version("xlmflow.storage"), {}), refs)
