"""Every stage of the registry appears in every place derived from it: CLI, config, pipeline, status, deployments."""

import inspect
from pathlib import Path

import yaml

from xlmflow.flows import pipeline as pipeline_module
from xlmflow.flows.cli import build_parser, status
from xlmflow.flows.config import PipelineConfig
from xlmflow.flows.registry import STAGES
from xlmflow.storage import Location

ROOT = Path(__file__).resolve().parents[1]
NAMES = [s.name for s in STAGES]


def test_names_are_unique_and_one_name_per_stage():
    assert len(set(NAMES)) == len(NAMES)
    for s in STAGES:
        assert s.flow.name == s.name, f"flow {s.flow.name!r} of stage {s.name!r}"
        assert set(s.reads) <= set(NAMES[: NAMES.index(s.name)]), f"{s.name} reads a stage that runs after it"
        assert inspect.getsourcefile(inspect.unwrap(s.flow.fn)) == str(ROOT / "flows" / f"{s.name}.py")


def test_cli_has_a_command_and_an_option_group_per_stage():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == ["run", *NAMES, "status", "serve"]
    run_groups = [g.title for g in sub.choices["run"]._action_groups]
    for s in STAGES:
        assert f"{s.name} options" in run_groups
        groups = [g.title for g in sub.choices[s.name]._action_groups]
        assert [g for g in groups if g.endswith(" options") and g != "options"] == [f"{s.name} options"]


def test_config_has_a_section_per_stage_and_flags_land_in_it():
    assert [f for f in PipelineConfig.model_fields if f != "parallel"] == NAMES
    for s in STAGES:
        assert isinstance(getattr(PipelineConfig.demo(), s.name), s.params)
        for option, field in s.flags.items():
            assert field in s.params.model_fields, f"{s.name}: {option} names no field {field!r}"


def test_pipeline_runs_the_registry_in_order():
    assert "for s in STAGES" in inspect.getsource(pipeline_module.pipeline.fn)


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


def test_a_stage_flow_without_parameters_runs_the_demo_section():
    demo = PipelineConfig.demo()
    for s in STAGES:
        assert s.demo() == demo.stage_params(s.name), s.name
