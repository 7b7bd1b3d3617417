"""Training: token shards + aligned vocabulary -> a cross-lingual GPT-2 in ``<run>/train``.

The stage is one unit whose fingerprint covers the shard stage, the tokenizer (and the
alignment table when it is used), the fingerprinted parameters, this code (model, data,
loop) and the torch/transformers/accelerate versions. The work runs in a subprocess (or
several: torchrun / ``accelerate launch``), :mod:`.loop`, whose log this task streams;
only this process commits. Checkpoints live outside the stage folder, keyed by the unit's
fingerprint (``<run>/.checkpoints/train/<fingerprint>``), so a failed or killed attempt,
retried by Prefect or started again by hand, resumes from its last checkpoint, and a
changed configuration never resumes from a stale one.

A configuration no attempt can train (a model shape GPT-2 cannot have, an unknown model key, a run
directory on a remote store) is refused at planning, before any process starts; one that still reaches the
training processes stops them with a configuration error (:data:`.loop.CONFIG_ERROR`), which this task
raises as :class:`TrainingConfigError`, a ValueError, so Prefect does not retry it.

The committed folder is a Hugging Face model folder: ``model.safetensors``, ``config.json``,
``generation_config.json``, ``modeling_xlmflow.py`` (for ``trust_remote_code``), the
tokenizer files, ``metrics.jsonl`` and ``summary.json``::

    import xlmflow, transformers
    model = transformers.AutoModelForCausalLM.from_pretrained("runs/demo/train")
    tok = transformers.AutoTokenizer.from_pretrained("runs/demo/train")
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import replace
from typing import Any

from xlmflow.storage import (
    Aside,
    Location,
    RunDir,
    code_version,
    file_sha256,
    load_output,
    remove_checkpoints,
)
from xlmflow.storage.shards import PAIRS
from xlmflow.tasks.common import progress
from xlmflow.tasks.common.runtime import Input, Ref, Unit, ensure, logger, plain_step, step
from xlmflow.tasks.common.specials import TOKENIZER_FILE
from xlmflow.tasks.train import loop as train_loop
from xlmflow.tasks.train.incremental import base_model, continued, covered, rollback, shard_rows  # noqa: F401
from xlmflow.tasks.train.params import (  # noqa: F401  (TRAINING, DROPOUT_OFF: re-exported)
    CONTINUE,
    DROPOUT_OFF,
    PRESETS,
    TRAINING,
    TrainParams,
    build_config,
    check_model,
    checked_already,
)

PACKAGE = "xlmflow.tasks.train"  # the code key covers the whole package: the training processes' modules too
SHARD, VOCAB = "shard", "vocab"
READS = (VOCAB, SHARD)  # the stages whose committed output training reads
STAGE = "train"
ALIGNMENT = "alignment.parquet"  # the vocab stage's alignment table
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
#: what changes speed or bookkeeping, not the weights: kept out of the fingerprint
OPTIONS = ("log_every", "checkpoint_every", "keep_checkpoints", "launcher", "accelerate_config", "record_documents")


def check_run_dir(run: RunDir, params: TrainParams | None = None) -> None:
    """Refuse, at planning, a run directory training cannot use: the training processes write their checkpoints
    and the model with plain file operations (torch, safetensors, Accelerate), so the run directory must be on
    a local or mounted (shared) file system, not an fsspec URL (``s3://``, ``memory://``...). The pipeline calls
    this before any stage runs, so a remote run directory fails at once, not after every data stage."""
    if run.root.is_local:
        return
    raise ValueError(
        f"{run.root.uri}: training needs a local run directory (or a mounted, shared file system): its processes "
        "write checkpoints and the model with plain file operations; run the data stages (ingest to shard) on "
        "the remote one, copy it to a local folder and train with --run-dir the local copy"
    )


def _checked_model(params: TrainParams) -> dict[str, Any]:
    """The model configuration of ``params``, checked here (see :func:`check_model`) before any process starts."""
    model = params.model_fields_resolved()
    try:
        check_model(model, params.model)
    except ValueError as e:
        raise ValueError(f"train.model: {e}") from e
    return model


def plan(run: RunDir, params: TrainParams, incremental: bool = False) -> Unit:
    """The one unit of the stage, fingerprinted by the shards, the tokenizer (and alignment) and the parameters.

    The run directory and the model configuration are checked first: a configuration no attempt can train is a
    ValueError here, in one line, before any training process starts."""
    check_run_dir(run, params)
    model = _checked_model(params)
    shard_loc, vocab_loc = run.stage(SHARD), run.stage(VOCAB)
    shards = load_output(shard_loc, SHARD)
    vocab = load_output(vocab_loc, VOCAB)
    langs = sorted(shards.stats["totals"]["train"])
    if not langs:
        raise ValueError(f"{shard_loc}: no train shards; run the shard stage on a corpus with documents")
    block = params.block_size or model["n_positions"]
    if block > model["n_positions"]:
        raise ValueError(f"block_size {block} is longer than the model's context n_positions={model['n_positions']}")
    inputs = {
        SHARD: {"stage": Input(shard_loc.uri, shards.fingerprint)},
        "tokenizer": {TOKENIZER_FILE: Input(vocab_loc.child(TOKENIZER_FILE).uri, vocab.file(TOKENIZER_FILE).sha256)},
    }
    if params.align != "none":
        inputs["alignment"] = {ALIGNMENT: Input(vocab_loc.child(ALIGNMENT).uri, vocab.file(ALIGNMENT).sha256)}
    if params.accelerate_config:
        loc = Location.of(params.accelerate_config)
        inputs["accelerate_config"] = {loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])}
    tokens = sum(n.get("tokens", 0) for n in shards.stats["totals"]["train"].values())
    resolved = params.training_resolved(train_tokens=tokens, block_size=block)  # the preset's where unset
    train = params.model_dump(exclude={"preset", "model", *OPTIONS, *CONTINUE}) | {"block_size": block}
    train |= {k: v for k, v in resolved.items() if k in train}
    train["alpha"] = params.alpha if params.alpha is not None else vocab.params.get("alpha", 0.3)
    if train["parallel_share"] and not any(f.path.startswith(f"{PAIRS}/") for f in shards.files):
        logger().warning(
            "train: parallel_share %g, but the shard stage has no translation pairs (no parallel set with a train "
            "part): training without pair blocks",
            train["parallel_share"],
        )
        train["parallel_share"] = 0.0
    if not train["parallel_share"]:
        train["parallel_schedule"] = "constant"  # no pairs, no schedule: one key for every run without them
    libraries = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "accelerate")}
    unit = Unit(
        stage=STAGE,
        name=STAGE,
        out=run.stage(STAGE).uri,
        code_version=code_version(PACKAGE),
        params={
            "model": model,
            "train": train,
            "langs": langs,
            "align": params.align,
            "libraries": libraries,
            "increment": max((r["increment"] for r in shard_rows(shard_loc)), default=1),
        },
        inputs=inputs,
        options=params.model_dump(include=set(OPTIONS)) | {k: v for k, v in resolved.items() if k in OPTIONS},
    )
    base = base_model(run) if incremental else None
    if base is not None and base.upstream.get(f"tokenizer/{TOKENIZER_FILE}") != unit.input("tokenizer").fingerprint:
        logger().warning("train: the vocabulary changed since the last model (vocab --force): training from step 0")
    elif base is not None:
        unit = continued(run, params, unit, base)
    ckpt = run.checkpoints(STAGE, unit.fingerprint)
    return replace(unit, options=unit.options | {"checkpoints": ckpt.path})


def spec_of(unit: Unit) -> dict[str, Any]:
    """What the training processes read (SPEC.json): inputs, model, hyper-parameters, folders."""
    ckpt = unit.options["checkpoints"]
    p = unit.params
    return {
        "shards": unit.input(SHARD).uri,
        "vocab": Location(unit.input("tokenizer").uri).parent.uri,
        "alignment": unit.input("alignment").uri if "alignment" in unit.inputs else None,
        "langs": p["langs"],
        "align": p["align"],
        "model": p["model"],
        "train": p["train"]
        | {k: unit.options[k] for k in ("log_every", "checkpoint_every", "keep_checkpoints", "record_documents")},
        "checkpoints": ckpt,
        "final": os.path.join(ckpt, "final"),
        "fingerprint": unit.fingerprint,
    } | (
        {
            "init_from": Location(unit.input("base").uri).parent.path,
            "continued": p["continued"],
            "fresh": p["continued"]["fresh"],
        }
        if "continued" in p
        else {}
    )


def command(unit: Unit, spec_path: str) -> list[str]:
    """The training processes' launch command (:func:`launch_command`)."""
    o = unit.options
    return launch_command(unit.params["train"]["num_processes"], o["launcher"], o["accelerate_config"], spec_path)


def launch_command(
    n: int, how: str, accelerate_config: str | None, spec_path: str, module: str = train_loop.__name__
) -> list[str]:
    """``python -m module spec_path`` in ``n`` processes: plain python, torchrun (CPU, several processes) or accelerate
    launch (GPUs, an accelerate config file); ``auto`` picks accelerate with a config or a GPU, else torchrun for
    several processes, else python."""
    if how == "auto":
        how = "accelerate" if accelerate_config or _gpu() else ("torchrun" if n > 1 else "python")
    body = ["-m", module, spec_path]
    if how == "python":
        if n != 1:
            raise ValueError("launcher 'python' runs one process; use torchrun or accelerate for num_processes > 1")
        return [sys.executable, *body]
    if how == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *body]
    cfg = ["--config_file", accelerate_config] if accelerate_config else []
    return [sys.executable, "-m", "accelerate.commands.launch", *cfg, f"--num_processes={n}", *body]


def _gpu() -> bool:
    """Whether torch sees a GPU. On Linux, asked only where a GPU driver is loaded (NVIDIA's /proc/driver/nvidia,
    ROCm's /dev/kfd): elsewhere the answer is no, without torch's import (seconds) in this process, which only
    launches the work."""
    linux = sys.platform.startswith("linux")
    if linux and not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd")):
        return False
    import torch

    return torch.cuda.is_available()


def train_unit(unit: Unit) -> Ref:
    """Train (or resume) in subprocesses, then commit the final model folder as the stage."""
    ckpt = Location(unit.options["checkpoints"])
    spec = spec_of(unit)
    if not checked_already(unit.params["model"]):  # the values planning could not check, before any launch
        build_config(unit.params["model"])
    attempt, retries = _attempt()
    if attempt > 1:  # a Prefect retry: say so, also in a plain-text log
        progress.note(
            f"train: retry {attempt - 1} of {retries} (attempt {attempt}): resuming from the last checkpoint in {ckpt}"
        )
    return launch_and_commit(unit, spec, lambda spec_path: command(unit, spec_path), Location(spec["vocab"]))


def launch_and_commit(
    unit: Unit,
    spec: dict[str, Any],
    cmd,
    tokenizer: Location,
    what: str = STAGE,
    summary: str = train_loop.SUMMARY,
    threads: int | None = None,
) -> Ref:
    """Commit ``unit``: its training processes (``cmd(spec path)``) write the model to ``<checkpoints>/final`` unless
    a finished one is there (a killed commit), then the folder and ``tokenizer``'s files are committed and the
    checkpoints go. The train and finetune stages' units both commit this way."""
    ckpt = Location(unit.options["checkpoints"])

    def build(aside: Aside) -> dict[str, Any]:
        final = ckpt.child("final")
        if not final.child(summary).exists():
            ckpt.makedirs()
            spec_path = ckpt.child("spec.json")
            with spec_path.open("wb") as f:
                f.write(json.dumps(spec, indent=2, sort_keys=True).encode())
            launch(cmd(spec_path.path), ckpt, what, threads)
        else:
            logger().info("%s: %s already holds the trained model; committing it", what, final)
        for name in sorted(final.fs.ls(final.path, detail=False)):
            name = name.rstrip("/").rsplit("/", 1)[-1]
            _copy(final.child(name), aside.path(name))
        for name in TOKENIZER_FILES:
            if tokenizer.child(name).exists():
                _copy(tokenizer.child(name), aside.path(name))
        with final.child(summary).open("rb") as f:
            return json.loads(f.read())

    ref = ensure(unit, build)
    remove_checkpoints(ckpt)  # the model is committed (its metrics.jsonl too): checkpoints, spec and log go
    return ref


def launch(cmd: list[str], ckpt: Location, what: str = STAGE, threads: int | None = None) -> None:
    """Run the training processes, streaming their output to the Prefect log and progress artifact; ``what`` (the
    stage: train, finetune) heads each line; ``threads``: each process's CPU threads (OMP_NUM_THREADS), when
    several launches share the machine (more threads than cores spin and slow every process down)."""
    log = logger()
    log.info("%s: %s (checkpoints in %s)", what, " ".join(cmd), ckpt)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    } | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    tail: deque[str] = deque(maxlen=20)
    shown = Progress(what)
    config_error = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith(train_loop.PROGRESS):
                shown.update(json.loads(line[len(train_loop.PROGRESS) :]))
            elif train_loop.CONFIG_ERROR in line:  # any rank's, whatever the launcher prefixes
                config_error = config_error or line.split(train_loop.CONFIG_ERROR, 1)[1]
                log.error("%s: configuration error: %s", what, config_error)
            elif line:
                tail.append(line)
                log.info("%s: %s", what, line)
                if line.startswith((train_loop.RESUMED, train_loop.CONTINUED)):
                    progress.note(f"{what}: {line}")
    if proc.returncode and (config_error is not None or proc.returncode == train_loop.CONFIG_EXIT):
        raise TrainingConfigError(
            f"training stopped on a configuration error: {config_error or 'see the log'}; fix the train "
            "configuration (another attempt would fail the same way)"
        )
    if proc.returncode:
        raise TrainingFailed(
            f"training exited with code {proc.returncode}; a retry resumes from the last checkpoint "
            f"in {ckpt}. Last output:\n" + "\n".join(tail)
        )


class TrainingFailed(RuntimeError):
    """The training processes failed; their checkpoints stay for the next attempt."""


class TrainingConfigError(ValueError):
    """The training processes stopped on their configuration: permanent (a ValueError, so not retried)."""


def _attempt() -> tuple[int, int]:
    """(this attempt, retries allowed) of the Prefect task run this is called in; (1, 0) outside one."""
    try:
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        if ctx is not None:
            return max(1, ctx.task_run.run_count), ctx.task.retries
    except Exception:  # the note is a convenience: never fail training for it
        pass
    return 1, 0


class Progress:
    """Training progress to the log and, inside a Prefect run, a progress artifact."""

    def __init__(self, what: str = STAGE):
        self.artifact, self.what = None, what

    def update(self, row: dict[str, Any]) -> None:
        log = logger()
        progress.training(row["step"], row["max_steps"], row.get("loss"), row.get("tokens_per_s"), self.what)
        if "loss" in row:
            log.info(
                "%s: step %d/%d loss %.4f lr %.2e grad-norm %.2f %.0f tokens/s",
                self.what,
                row["step"],
                row["max_steps"],
                row["loss"],
                row["lr"],
                row["grad_norm"],
                row["tokens_per_s"],
            )
        if "valid_loss" in row:
            log.info(
                "%s: step %d valid loss %s",
                self.what,
                row["step"],
                ", ".join(f"{k}={v:.3f}" for k, v in row["valid_loss"].items()),
            )
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact
            from prefect.context import TaskRunContext

            if TaskRunContext.get() is None:
                return
            percent = round(100.0 * row["step"] / row["max_steps"], 1)
            if self.artifact is None:
                self.artifact = create_progress_artifact(percent, description=f"{self.what}: steps done")
            else:
                update_progress_artifact(self.artifact, percent)
        except Exception as e:  # an artifact is a convenience; never fail training for it
            log.debug("%s: no progress artifact (%s)", self.what, e)


def _copy(src: Location, dst: Location) -> None:
    with src.open("rb") as f, dst.open("wb") as g:
        shutil.copyfileobj(f, g, 4 << 20)


# ---------------------------------------------------------------- Prefect tasks

plan_task = plain_step("train-plan")(plan)
train_task = step(name="train-model", retries=2)(train_unit)
