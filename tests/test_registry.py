"""Every stage of the registry appears in every place derived from it: CLI, config, pipeline, status, deployments."""

import inspect
from pathlib import Path

import pytest
import yaml

from xlmflow.flows import pipeline as pipeline_module
from xlmflow.flows.cli import COMMANDS, build_parser, status
from xlmflow.flows.config import PipelineConfig
from xlmflow.flows.registry import STAGES
from xlmflow.storage import Location

ROOT = Path(__file__).resolve().parents[1]
NAMES = [s.name for s in STAGES]
REPORTED = [s.name for s in STAGES if s.report]  # stages with a Prefect artifact: the pipeline's summary lists them


def test_names_are_unique_and_one_name_per_stage():
    assert len(set(NAMES)) == len(NAMES)
    for s in STAGES:
        assert s.flow.name == s.name, f"flow {s.flow.name!r} of stage {s.name!r}"
        assert set(s.reads) <= set(NAMES[: NAMES.index(s.name)]), f"{s.name} reads a stage that runs after it"
        assert inspect.getsourcefile(inspect.unwrap(s.flow.fn)) == str(ROOT / "flows" / f"{s.name}.py")


def test_cli_has_a_command_and_an_option_group_per_stage():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == ["run", *NAMES, *(c for c in COMMANDS if c != "run")]
    run_groups = [g.title for g in sub.choices["run"]._action_groups]
    for s in STAGES:
        assert f"{s.name} options" in run_groups
        groups = [g.title for g in sub.choices[s.name]._action_groups]
        assert [g for g in groups if g.endswith(" options") and g != "options"] == [f"{s.name} options"]


def test_config_has_a_section_per_stage_and_flags_land_in_it():
    assert [f for f in PipelineConfig.model_fields if f not in ("parallel", "incremental")] == NAMES
    for s in STAGES:
        assert isinstance(getattr(PipelineConfig.demo(), s.name), s.params)
        for option, field in s.flags.items():
            assert field in s.params.model_fields, f"{s.name}: {option} names no field {field!r}"


@pytest.fixture
def stage_calls(monkeypatch):
    """The pipeline's calls, with every stage flow, the invalidation of a forced stage and the summary artifact
    recorded instead of run: (event, stage name, params)."""
    calls = []

    def on(fl, dask):
        def run(run_dir, params):
            calls.append(("run", fl.name, params))
            return f"ref-{fl.name}"

        return run

    monkeypatch.setattr(pipeline_module, "on", on)
    monkeypatch.setattr(pipeline_module, "invalidate_task", lambda run_dir, name: calls.append(("force", name, None)))
    monkeypatch.setattr(
        pipeline_module.artifacts,
        "summary_task",
        lambda run_dir, stages: calls.append(("summary", [name for name, _ in stages], None)),
    )
    return calls


def test_pipeline_runs_every_stage_flow_in_registry_order_with_its_section(tmp_path, stage_calls):
    config = PipelineConfig.demo().model_copy(deep=True)
    config.vocab.vocab_size = 1234  # a section of its own reaches its own stage
    refs = pipeline_module.pipeline.fn(str(tmp_path / "run"), config)
    assert stage_calls == [
        *(("run", s.name, config.stage_params(s.name)) for s in STAGES),
        ("summary", REPORTED, None),
    ]
    assert [type(params) for _, _, params in stage_calls[:-1]] == [s.params for s in STAGES]
    assert stage_calls[2][2].vocab_size == 1234
    assert refs == {name: f"ref-{name}" for name in NAMES}


def test_pipeline_runs_only_the_chosen_stages_in_registry_order_and_forces_those_asked(tmp_path, stage_calls):
    config = PipelineConfig.demo()
    chosen = [NAMES[-1], NAMES[0], NAMES[2]]  # asked out of order
    pipeline_module.pipeline.fn(str(tmp_path / "run"), config, stages=chosen, force=[NAMES[2]])
    in_order = [n for n in NAMES if n in chosen]
    expected = [step for n in in_order for step in ([("force", n)] if n == NAMES[2] else []) + [("run", n)]]
    assert [(event, name) for event, name, _ in stage_calls] == [
        *expected,
        ("summary", [n for n in in_order if n in REPORTED]),
    ]
    assert pipeline_module.selected(None, NAMES[2]) == NAMES[2:]  # --from
    assert pipeline_module.selected(chosen, None) == in_order  # --only
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        pipeline_module.selected(["nope"], None)


def test_status_has_a_row_per_stage(tmp_path, capsys):
    status(str(tmp_path / "empty"))
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert rows == NAMES


def test_prefect_yaml_deploys_the_pipeline_and_every_stage():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    found = {d["name"]: d["entrypoint"] for d in spec["deployments"]}
    expected = {s.name: f"flows/{s.name}.py:{s.flow.fn.__name__}" for s in STAGES}
    assert found == {"nightly": "flows/pipeline.py:pipeline", **expected}
    # every form default is the demo's real value, with package paths, never one machine's absolute paths
    from xlmflow.flows.serve import parameters

    assert {d["name"]: d["parameters"] for d in spec["deployments"]} == parameters("runs/scheduled")
    assert str(ROOT) not in (ROOT / "deployments" / "prefect.yaml").read_text()
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["concurrency_limit"] == 1 and nightly["schedules"][0]["cron"]


def test_demo_settings_only_in_the_demo_config(tmp_path):
    from xlmflow.flows.cli import config_from

    user = config_from(build_parser().parse_args(["run", "--source", "my.jsonl"]))
    assert user.parallel == []
    assert user.stage_params("langid").holdout == [] and user.stage_params("vocab").parallel == []
    (tmp_path / "c.toml").write_text('[[ingest.sources]]\npath = "x.jsonl"\n')
    from_file = PipelineConfig.load(tmp_path / "c.toml")
    assert from_file.parallel == [] and from_file.stage_params("langid").holdout == []
    demo = config_from(build_parser().parse_args(["run"]))
    assert demo.stage_params("langid").holdout == demo.parallel == demo.stage_params("vocab").parallel
    assert len(demo.parallel) == 1 and Location.of(demo.parallel[0]).is_dir() and demo.ingest.sources
    assert demo.parallel[0].startswith("package:") and Location.of(demo.parallel[0]).path.startswith(str(ROOT))
    mine = config_from(build_parser().parse_args(["run", "--source", "a.txt", "--parallel", str(tmp_path)]))
    assert mine.stage_params("langid").holdout == [str(tmp_path)] == mine.stage_params("vocab").parallel
    more = config_from(build_parser().parse_args(["run", "--parallel", "extra.tsv"]))
    assert more.parallel == [*demo.parallel, "extra.tsv"], "--parallel adds to the demo's sets"
    (tmp_path / "one.toml").write_text('parallel = "/sets"\n')
    assert PipelineConfig.load(tmp_path / "one.toml").parallel == ["/sets"]


def test_field_flags_take_type_choices_and_booleans_from_the_params_model():
    import argparse
    from typing import Literal

    from pydantic import BaseModel, Field

    from xlmflow.flows.stage import Stage

    class Toy(BaseModel):
        size: int = Field(3, description="how many")
        mode: Literal["a", "b"] = "a"
        fast: bool = True

    stage = Stage(
        name="toy", flow=None, params=Toy, help="", flags={"--size": "size", "--mode": "mode", "--fast": "fast"}
    )
    parser = argparse.ArgumentParser()
    stage.add_flags(parser.add_argument_group("toy options"))
    params = Toy()
    stage.apply_flags(parser.parse_args(["--size", "7", "--mode", "b", "--no-fast"]), params)
    assert (params.size, params.mode, params.fast) == (7, "b", False)
    untouched = Toy()
    stage.apply_flags(parser.parse_args([]), untouched)
    assert untouched == Toy()
    assert "how many (default 3)" in parser.format_help()


def test_a_stage_flow_without_parameters_runs_its_section_of_the_runs_configuration(tmp_path, monkeypatch):
    """Called with no parameters (a deployment run as it is, a Python caller), every stage flow runs its own
    section of the run directory's configuration, and records it as what it runs with: the demo's on a new run
    directory, the recorded one after that. Each flow is stopped as it starts its work."""
    from xlmflow.tasks.common import progress

    class Stop(Exception):
        pass

    def stage(name, event, *args):
        if event == "started":
            raise Stop(name)

    monkeypatch.setattr(progress, "stage", stage)
    mine = PipelineConfig.model_validate({"langid": {"threshold": 0.65}, "vocab": {"vocab_size": 3000}})
    mine.record(str(tmp_path / "mine"))
    for run_dir, config in ((tmp_path / "new", PipelineConfig.demo()), (tmp_path / "mine", mine)):
        for s in STAGES:
            with pytest.raises(Stop, match=s.name):
                s.flow.fn(str(run_dir))
            recorded = PipelineConfig.for_run(str(run_dir))
            assert recorded.stage_params(s.name) == config.stage_params(s.name), (run_dir.name, s.name)
        assert recorded == config, run_dir.name
    assert recorded.langid.threshold == 0.65 and recorded.vocab.vocab_size == 3000
