"""Small helpers shared by the tests: writing inputs, reading what a flow run did."""

from __future__ import annotations

from collections import Counter


def task_states(flow_state) -> Counter:
    """Counter of (task name prefix, final state name) for one flow run."""
    from prefect import get_client

    flow_run_id = flow_state.state_details.flow_run_id
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return Counter((r.name.rsplit("-", 1)[0], r.state.name) for r in runs)
