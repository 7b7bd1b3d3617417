"""The ingest flow under a real (temporary) Prefect API: exact caching, rebuilds, kills, the CLI."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import runs_of, task_states

from xlmflow.flows.ingest import ingest_flow
from xlmflow.storage import RunDir, load_output
from xlmflow.tasks.ingest import IngestParams, Source


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for name, lang, lines in [
        ("en.txt", "en", ["Hello world", "Good morning"]),
        ("fr.txt", "fr", ["Bonjour", "Salut"]),
        ("de.txt", "de", ["Guten Tag", "Hallo"]),
    ]:
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def params_for(corpus) -> IngestParams:
    return IngestParams(sources=[Source(path=str(corpus), format="text")])


def run(run_dir, corpus):
    return ingest_flow(run_dir=run_dir, params=params_for(corpus), return_state=True)


def test_rerun_is_cached_one_changed_file_reruns_alone_deleted_output_rebuilt(prefect_api, run_dir, corpus):
    first = task_states(run(run_dir, corpus))
    assert first[("ingest-file", "Completed")] == 3 and first[("ingest-commit", "Completed")] == 1

    second = task_states(run(run_dir, corpus))
    assert runs_of(second, "ingest-file") == runs_of(second, "ingest-commit") == 0  # current units: no task run

    (corpus / "fr.txt").write_text("Bonjour\nSalut\nAu revoir\n", encoding="utf-8")
    changed = task_states(run(run_dir, corpus))
    assert runs_of(changed, "ingest-file") == changed[("ingest-file", "Completed")] == 1
    assert changed[("ingest-commit", "Completed")] == 1
    stage = load_output(RunDir.of(run_dir).stage("ingest"), "ingest")
    assert stage.stats["documents"] == 7 and stage.stats["units"] == 3

    victim = next(f for f in stage.files if f.path.endswith("part-00000.parquet"))
    before = _mtimes(run_dir)
    os.remove(Path(run_dir) / "ingest" / victim.path)
    rebuilt = task_states(run(run_dir, corpus))
    assert runs_of(rebuilt, "ingest-file") == rebuilt[("ingest-file", "Completed")] == 1
    after = _mtimes(run_dir)
    rewritten = {p for p in after if after[p] != before.get(p)}
    assert {p for p in rewritten if "/parts/" in p} == {p for p in after if victim.path.split("/")[1] in p}
    assert load_output(RunDir.of(run_dir).stage("ingest")).file(victim.path).sha256 == victim.sha256


def _mtimes(run_dir):
    files = (Path(run_dir) / "ingest").rglob("*")
    return {str(p): p.stat().st_mtime_ns for p in files if p.is_file() and not p.name.startswith(".")}  # outputs only


def test_removed_input_file_removes_its_unit(prefect_api, run_dir, corpus):
    run(run_dir, corpus)
    (corpus / "de.txt").unlink()
    run(run_dir, corpus)
    run_ = RunDir.of(run_dir)
    assert len(run_.unit_names("ingest")) == 2
    assert load_output(run_.stage("ingest")).stats["claimed_lang"] == {"und": 4}


def test_bad_record_fails_flow_with_named_file_when_strict(prefect_api, run_dir, corpus):
    (corpus / "bad.txt").write_bytes(b"ok\n\xff\n")
    params = params_for(corpus)
    params.bad_records = "fail"
    with pytest.raises(Exception, match=r"bad\.txt: invalid UTF-8 at byte 0 of line 2"):
        ingest_flow(run_dir=run_dir, params=params)
    params.bad_records = "quarantine"
    ingest_flow(run_dir=run_dir, params=params)
    assert load_output(RunDir.of(run_dir).stage("ingest")).stats["quarantined"] == 1


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "xlmflow.flows.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _stage_bytes(run_dir, stages=("ingest",)):
    found = {}
    for stage in stages:
        root = Path(run_dir) / stage
        found |= {
            str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")  # hidden files (stat memos) are not outputs
        }
    return found


def test_cli_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "xlmflow.flows.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(s in out.stdout for s in ("run", "ingest", "langid", "vocab", "shard", "status"))


def test_cli_reports_bad_source_in_one_line_and_debug_shows_the_traceback(tmp_path):
    p = _cli("ingest", "--run-dir", str(tmp_path / "r"), "--source", str(tmp_path / "missing.jsonl"))
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 1
    line = f"xlmflow ingest: error: source {str(tmp_path / 'missing.jsonl')!r}: no such file or folder; check the path"
    events = re.compile(r"\d\d:\d\d:\d\d ")  # plain progress lines (the output is not a terminal)
    assert [x for x in out.splitlines() if x.strip() and not events.match(x)] == [
        line + " (relative paths start from the current folder) or the fsspec URL"
    ]
    assert "ingest: failed after" in out
    p = _cli("ingest", "--debug", "--run-dir", str(tmp_path / "r"), "--source", str(tmp_path / "missing.jsonl"))
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 1 and "Traceback (most recent call last)" in out and "InputError" in out


@pytest.mark.slow
def test_units_on_a_dask_cluster_give_the_same_bytes(tmp_path, corpus):
    """`--dask local`: the same flow with its units on a Dask LocalCluster (prefect-dask) commits the same bytes."""
    threads, dask = str(tmp_path / "threads"), str(tmp_path / "dask")
    for run_dir, extra in [(threads, []), (dask, ["--dask", "local"])]:
        p = _cli("ingest", "--run-dir", run_dir, "--source", str(corpus), "--format", "text", *extra)
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out
    assert _stage_bytes(dask) == _stage_bytes(threads)


def test_permanent_errors_fail_at_once_transient_ones_are_retried():
    from prefect.states import Failed

    from xlmflow.storage import ManifestError
    from xlmflow.tasks.common.runtime import transient
    from xlmflow.tasks.ingest.readers import InputError
    from xlmflow.tasks.train import TrainingFailed

    for permanent in (InputError("bad record"), ManifestError("run the shard stage first"), ValueError("bad config")):
        assert not transient(None, None, Failed(data=permanent))
    for passing in (ConnectionError("reset by peer"), TimeoutError(), TrainingFailed("exit 137; resumes")):
        assert transient(None, None, Failed(data=passing))


def test_empty_source_list_fails_at_once_with_a_clear_message(prefect_api, run_dir):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state = ingest_flow(run_dir=run_dir, params=IngestParams(sources=[]), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no sources configured"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [(r.name.rsplit("-", 1)[0], r.run_count) for r in runs] == [("ingest-plan", 1)], "not retried"
    assert not (Path(run_dir) / "ingest" / "_manifest.json").exists(), "no empty stage committed"


def test_only_from_and_force_choose_and_rebuild_stages(prefect_api, run_dir, corpus):
    from xlmflow.flows.cli import build_parser, config_from
    from xlmflow.flows.pipeline import pipeline, selected
    from xlmflow.flows.registry import STAGES

    names = [s.name for s in STAGES]
    assert selected(None, "vocab") == names[names.index("vocab") :]
    assert selected(["shard", "ingest"], None) == ["ingest", "shard"] and selected(None, None) is None
    with pytest.raises(ValueError, match="unknown stage 'shards'"):
        selected(["shards"], None)
    cfg = config_from(build_parser().parse_args(["run", "--source", str(corpus), "--format", "text"]))
    pipeline(run_dir, cfg, stages=["ingest"])
    assert (Path(run_dir) / "ingest" / "_manifest.json").exists() and not (Path(run_dir) / "langid").exists()
    built = _mtimes(run_dir)
    time.sleep(0.01)
    pipeline(run_dir, cfg, stages=["ingest"])
    assert _mtimes(run_dir) == built, "a rerun rebuilds nothing"
    forced = task_states(pipeline(run_dir, cfg, stages=["ingest"], force=["ingest"], return_state=True))
    assert forced[("invalidate", "Completed")] == 1
    after = _mtimes(run_dir)
    assert set(after) == set(built) and all(after[p] != built[p] for p in built), "--force rebuilds every file"
    assert load_output(RunDir.of(run_dir).stage("ingest")).stats["documents"] == 6
