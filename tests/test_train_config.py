"""The train stage's configuration: presets and their defaults, model keys and shapes, the run directory,
configuration errors that no retry can mend, and what a person sees (speed, a resume, a retry)."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import replace

import pytest
from test_train import PARAMS, TINY, build_inputs

from xlmflow.flows.config import PipelineConfig
from xlmflow.storage import Location, RunDir, load_output
from xlmflow.tasks import train
from xlmflow.tasks.common import progress
from xlmflow.tasks.common.runtime import transient
from xlmflow.tasks.train import TrainParams

#: the demo's training today (lr, warm-up, steps...): the demo preset must keep them
DEMO_TRAINING = {
    "batch_size": 16,
    "lr": 4e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 100,
    "max_steps": 1500,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "grad_accum": 1,
    "eval_every": 200,
    "checkpoint_every": 200,
    "parallel_share": 0.2,  # translation-pair blocks (issue 19), where the shard stage has pairs
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-config") / "run"
    build_inputs(str(root))
    return root


class Recorder:
    """A progress reporter that keeps what it is told."""

    def __init__(self):
        self.trained: list[tuple] = []
        self.notes: list[str] = []

    def stage(self, *args, **kwargs):
        pass

    def units(self, *args):
        pass

    def unit_done(self, *args):
        pass

    def training(self, step, total, loss, tokens_per_s=None, what="train"):
        self.trained.append((step, total, loss, tokens_per_s))

    def note(self, text):
        self.notes.append(text)


@pytest.fixture
def shown():
    r = Recorder()
    progress.install(r)
    yield r
    progress.install(None)


# ---------------------------------------------------------------- 1. a bad model shape fails once, at once
def test_bad_head_count_fails_at_planning_in_one_line_naming_the_keys(inputs):
    bad = PARAMS.model_copy(update={"model": {**TINY, "n_head": 3}})  # 32 is not divisible by 3
    began = time.perf_counter()
    with pytest.raises(ValueError) as e:
        train.plan(RunDir.of(str(inputs)), bad)
    assert time.perf_counter() - began < 30, "checked in this process, before any training process starts"
    text = str(e.value)
    assert "\n" not in text and "n_embd" in text and "n_head" in text and "divisible" in text, text
    with pytest.raises(ValueError, match=r"^config: train\.model: .*n_embd = 128 .*n_head = 5"):
        PipelineConfig.model_validate({"train": {"model": {"n_head": 5}}})  # the demo's n_embd is 128


def test_bad_head_count_is_not_retried(prefect_api, inputs, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from xlmflow.flows.train import train_flow

    run_dir = tmp_path / "run"
    shutil.copytree(inputs, run_dir)
    bad = PARAMS.model_copy(update={"model": {**TINY, "n_head": 3}})
    state = train_flow(run_dir=str(run_dir), params=bad, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="n_head"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    names = [(r.name.rsplit("-", 1)[0], r.run_count) for r in runs]
    assert not [n for n, _ in names if n != "train-plan"], f"training was launched: {names}"
    assert all(count == 1 for _, count in names), f"retried: {names}"


def test_configuration_error_inside_the_training_process_is_permanent(inputs, tmp_path):
    """A configuration the parent did not catch (here: handed over by hand) stops the training process with a
    distinct exit; the parent raises a permanent error, which Prefect does not retry."""
    from prefect.states import Failed

    run_dir = tmp_path / "run"
    shutil.copytree(inputs, run_dir)
    unit = train.plan(RunDir.of(str(run_dir)), PARAMS)
    unit = replace(unit, params=unit.params | {"model": unit.params["model"] | {"n_head": 3}})
    with pytest.raises(ValueError) as e:
        train.train_unit(unit)
    first = str(e.value).splitlines()[0]
    assert "configuration error" in first and "divisible" in first, first
    assert not transient(None, None, Failed(data=e.value)), "a configuration error is retried"


def test_a_configuration_error_line_of_any_rank_is_permanent(tmp_path):
    """Launchers (torchrun, accelerate launch) exit 1 whatever their ranks exited with: the marker line decides."""
    from xlmflow.tasks.train import loop

    line = f"[rank1]: {loop.CONFIG_ERROR}ValueError: bad activation 'nope'"
    cmd = [sys.executable, "-c", f"import sys; print({line!r}); sys.exit(1)"]
    with pytest.raises(train.TrainingConfigError, match=r"^training stopped on a configuration error: ValueError"):
        train.launch(cmd, Location.of(str(tmp_path)))
    with pytest.raises(train.TrainingFailed, match="exited with code 1"):  # anything else: retried, resumes
        train.launch([sys.executable, "-c", "import sys; sys.exit(1)"], Location.of(str(tmp_path)))


# ---------------------------------------------------------------- 2. unknown model keys are refused
@pytest.mark.parametrize(
    "model,message",
    [
        ({"n_layers": 6}, r"unknown model key 'n_layers'.*did you mean n_layer"),
        ({"n_emdb": 256}, r"unknown model key 'n_emdb'.*did you mean n_embd"),
        ({"hidden_size": 256}, r"'hidden_size'.*n_embd"),
        ({"vocab_size": 500}, r"'vocab_size' is set by the train stage"),
        ({"n_layer": "six"}, r"n_layer"),
    ],
)
def test_unknown_model_keys_are_refused_naming_close_ones(model, message, tmp_path):
    with pytest.raises(ValueError, match=rf"^config: train\.model: {message}"):
        PipelineConfig.model_validate({"train": {"model": model}})
    p = tmp_path / "xlmflow.toml"
    p.write_text("[train]\nmodel = {" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in model.items()) + "}\n")
    with pytest.raises(ValueError, match=rf"xlmflow\.toml: train\.model: {message}"):
        PipelineConfig.load(p)


def test_unknown_model_keys_are_refused_at_planning_too(inputs):
    """model_copy skips validation: the plan checks again."""
    with pytest.raises(ValueError, match=r"unknown model key 'n_layers'.*n_layer"):
        train.plan(RunDir.of(str(inputs)), PARAMS.model_copy(update={"model": {**TINY, "n_layers": 2}}))
    assert TrainParams(model={"n_layer": 2, "n_inner": 64, "activation_function": "gelu"}).model["n_inner"] == 64


def test_the_model_keys_are_gpt2configs():
    """The keys checked without importing transformers are the installed GPT2Config's (and ours are set by us)."""
    import dataclasses

    from transformers import GPT2Config

    from xlmflow.tasks.common.model import XlmGPT2Config
    from xlmflow.tasks.train import params

    gpt2 = {f.name for f in dataclasses.fields(GPT2Config)}
    assert set(params.GPT2_KEYS) == gpt2 - set(params.DERIVED) and params.GPT2_ALIASES == GPT2Config.attribute_map
    assert {f.name for f in dataclasses.fields(XlmGPT2Config)} - gpt2 <= set(params.DERIVED)


def test_a_value_of_the_wrong_type_fails_before_any_launch(inputs, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(inputs, run_dir)
    unit = train.plan(RunDir.of(str(run_dir)), PARAMS.model_copy(update={"model": {**TINY, "layer_norm_epsilon": "x"}}))
    monkeypatch.setattr(train.stage, "launch", lambda *args: pytest.fail("training was launched"))
    with pytest.raises(ValueError, match=r"^train\.model: .*layer_norm_epsilon"):
        train.train_unit(unit)


# ---------------------------------------------------------------- 3. presets carry their own training defaults
def test_presets_carry_their_own_training_defaults(inputs):
    small = TrainParams(preset="gpt2-small").training_resolved(train_tokens=10**10)  # ~build-nanogpt's 10B
    assert small["lr"] == 6e-4 and small["weight_decay"] == 0.1 and small["grad_clip"] == 1.0
    assert small["warmup_steps"] == 700 and small["min_lr_ratio"] == 0.1
    step_tokens = 16 * 1024 * small["grad_accum"]
    assert small["grad_accum"] == 32 and step_tokens == 2**19, "GPT-2 practice: ~0.5M tokens per step"
    assert small["max_steps"] == math.ceil(10**10 / step_tokens) == 19074, "one pass over the train tokens"
    assert TrainParams(preset="gpt2-small").training_resolved(10**9)["warmup_steps"] == 190, "<= 1/10 of 1908"
    assert TrainParams(preset="gpt2-small", lr=1e-3).training_resolved(10**9)["lr"] == 1e-3, "explicit lr kept"
    assert TrainParams(preset="gpt2-small", max_steps=100).training_resolved(10**9)["warmup_steps"] == 10
    assert TrainParams().training_resolved() == DEMO_TRAINING, "the demo's training changed"
    assert TrainParams(max_steps=50).training_resolved()["warmup_steps"] == 5, "at most a tenth of the steps"
    assert TrainParams(max_steps=50, warmup_steps=30).training_resolved()["warmup_steps"] == 30, "explicit kept"

    run = RunDir.of(str(inputs))
    demo = train.plan(run, TrainParams())
    planned = {"checkpoint_every", "parallel_share"}  # an option; 0 where the shards have no pairs (these have none)
    assert {k: demo.params["train"][k] for k in DEMO_TRAINING if k not in planned} == {
        k: v for k, v in DEMO_TRAINING.items() if k not in planned
    }
    assert demo.params["train"]["parallel_share"] == 0.0
    assert demo.options["checkpoint_every"] == 200
    gpt2 = train.plan(run, TrainParams(preset="gpt2-small"))
    tokens = sum(v["tokens"] for v in load_output(run.stage("shard"), "shard").stats["totals"]["train"].values())
    assert gpt2.params["train"]["lr"] == 6e-4 and gpt2.params["train"]["max_steps"] == math.ceil(tokens / 2**19)


def test_the_cli_preset_flag_gets_the_presets_defaults(tmp_path):
    """The CLI re-validates the config after laying the flags over it: the preset's defaults must survive that."""
    from xlmflow.flows.cli import build_parser, config_from

    def resolved(*flags):
        args = build_parser().parse_args(["train", "--run-dir", str(tmp_path / "run"), *flags])
        return config_from(args).stage_params("train").training_resolved(10**9)

    assert resolved("--preset", "gpt2-small")["lr"] == 6e-4
    assert resolved("--preset", "gpt2-small", "--lr", "1e-3")["lr"] == 1e-3
    assert resolved() == DEMO_TRAINING


def test_train_help_lists_each_preset_with_its_size_and_defaults(capsys):
    from xlmflow.flows.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("gpt2-small", "124M", "lr 6e-4", "warm-up 700", "lr 4e-3", "warm-up 100", "1500 steps"):
        assert needle in text, needle


# ---------------------------------------------------------------- 4. a remote run directory is refused at planning
def test_remote_run_directory_is_refused_at_planning(tmp_path):
    """memory:// stands for any fsspec store (s3://, gs://: s3fs is not installed here)."""
    remote = RunDir.of("memory://xlmflow-test/run")
    with pytest.raises(
        ValueError, match=r"^memory://xlmflow-test/run: training needs a local run directory.*--run-dir"
    ):
        train.check_run_dir(remote, TrainParams())
    for local in (str(tmp_path / "run"), f"file://{tmp_path}/run"):
        assert train.check_run_dir(RunDir.of(local), TrainParams()) is None
    with pytest.raises(ValueError, match="training needs a local run directory"):  # before any stage is read
        train.plan(remote, TrainParams())
    from xlmflow.flows.train import STAGE

    assert STAGE.check is train.check_run_dir, "the pipeline's planning does not ask the train stage"


# ---------------------------------------------------------------- 6. what a person sees
def test_progress_shows_speed_and_a_resume(tmp_path, shown):
    from xlmflow.tasks.train import loop

    row = {"step": 10, "max_steps": 20, "loss": 3.5, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1234.5}
    script = f"print('resumed from checkpoint step-0000008 at step 8'); print({loop.PROGRESS + json.dumps(row)!r})"
    train.launch([sys.executable, "-c", script], Location.of(str(tmp_path)))
    assert shown.trained == [(10, 20, 3.5, 1234.5)]
    assert shown.notes == ["train: resumed from checkpoint step-0000008 at step 8"]


def test_a_retried_training_task_says_so(prefect_api, inputs, tmp_path, monkeypatch, shown):
    from prefect import flow

    run_dir = tmp_path / "run"
    shutil.copytree(inputs, run_dir)
    calls = []

    def launch(cmd, ckpt, what="train", threads=None):
        calls.append(cmd)
        if len(calls) == 1:
            raise train.TrainingFailed("training exited with code 137")  # killed: retried
        raise ValueError("stop here")  # permanent: the test ends

    monkeypatch.setattr(train.stage, "launch", launch)
    task = train.train_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)

    @flow
    def one_unit(run_dir: str):
        return task(train.plan(RunDir.of(run_dir), PARAMS))

    state = one_unit(str(run_dir), return_state=True)
    assert state.is_failed() and len(calls) == 2
    retries = [n for n in shown.notes if "retry" in n]
    assert len(retries) == 1 and retries[0].startswith("train: retry 1 of 2 (attempt 2)"), shown.notes
