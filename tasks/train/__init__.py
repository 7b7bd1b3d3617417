"""Training: token shards + aligned vocabulary -> a cross-lingual GPT-2 in ``<run>/train``.

The stage is one unit whose fingerprint covers the shard stage, the tokenizer (and the
alignment table when it is used), the fingerprinted parameters, this code (model, data,
loop) and the torch/transformers/accelerate versions. The work runs in a subprocess (or
several: torchrun / ``accelerate launch``), :mod:`.train_loop`, whose log this task streams;
only this process commits. Checkpoints live outside the stage folder, keyed by the unit's
fingerprint (``<run>/.checkpoints/train/<fingerprint>``), so a failed or killed attempt,
retried by Prefect or started again by hand, resumes from its last checkpoint, and a
changed configuration never resumes from a stale one.

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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xlmflow.storage import Aside, Location, RunDir, code_version, file_sha256, load_output
from xlmflow.tasks.common import progress
from xlmflow.tasks.common.runtime import Input, Ref, Unit, ensure, logger, plain_step, step
from xlmflow.tasks.common.specials import TOKENIZER_FILE
from xlmflow.tasks.train import loop as train_loop

STAGE = "train"
ALIGNMENT = "alignment.parquet"  # the vocab stage's alignment table
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
PRESETS: dict[str, dict[str, Any]] = {
    # CPU: ~3M parameters (most in the 16k x 128 embedding), a few minutes on 2 cores
    "demo": {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": 128},
    # GPT-2 small, 124M with a 50k vocabulary (fewer with a smaller one), for a GPU
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
}
DROPOUT_OFF = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # pretraining on fresh tokens: no dropout
#: what changes speed or bookkeeping, not the weights: kept out of the fingerprint
OPTIONS = ("log_every", "checkpoint_every", "keep_checkpoints", "launcher", "accelerate_config", "record_documents")


class TrainParams(BaseModel):
    """Defaults train the ``demo`` preset on a CPU in a few minutes."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["demo", "gpt2-small"] = Field("demo", description="model size: demo (CPU) or gpt2-small (GPU)")
    model: dict[str, Any] = Field(default_factory=dict, description="GPT2Config fields over the preset's")
    align: Literal["none", "init", "tie"] = Field(
        "init",
        description="aligned vocabulary: none; init (aligned tokens start from their anchor's row); "
        "tie (aligned tokens share their anchor's input row)",
    )
    max_steps: int = Field(300, ge=1, description="optimiser steps")
    batch_size: int = Field(16, ge=1, description="blocks per micro-batch and process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    block_size: int | None = Field(None, ge=8, description="tokens per block; None = the model's context")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate / peak")
    warmup_steps: int = Field(30, ge=0)
    schedule: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay")
    grad_clip: float = Field(1.0, gt=0)
    alpha: float | None = Field(None, gt=0, le=1, description="language mixture exponent; None = the vocab stage's")
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on a GPU that has it, else fp32")
    eval_every: int = Field(100, ge=1, description="per-language validation loss every N steps (and at the end)")
    eval_blocks: int = Field(16, ge=1, description="validation blocks per language")
    num_processes: int = Field(1, ge=1, description="processes (CPU: torchrun; GPUs: accelerate launch)")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    launcher: Literal["auto", "python", "torchrun", "accelerate"] = Field(
        "auto", description="auto: python for one CPU process, torchrun for several, accelerate launch on GPUs"
    )
    accelerate_config: str | None = Field(None, description="an accelerate config file (multi-GPU, multi-node)")
    record_documents: bool = Field(
        False,
        description="each rank writes which documents it read (documents-rank-R.json "
        "beside the checkpoints), to check a distributed run's data split",
    )

    def model_fields_resolved(self) -> dict[str, Any]:
        return {**PRESETS[self.preset], **DROPOUT_OFF, **self.model}


def plan(run: RunDir, params: TrainParams) -> Unit:
    """The one unit of the stage, fingerprinted by the shards, the tokenizer (and alignment) and the parameters."""
    shard_loc, vocab_loc = run.stage("shard"), run.stage("vocab")
    shards = load_output(shard_loc, "shard")
    vocab = load_output(vocab_loc, "vocab")
    langs = sorted(shards.stats["totals"]["train"])
    if not langs:
        raise ValueError(f"{shard_loc}: no train shards; run the shard stage on a corpus with documents")
    model = params.model_fields_resolved()
    block = params.block_size or model["n_positions"]
    if block > model["n_positions"]:
        raise ValueError(f"block_size {block} is longer than the model's context n_positions={model['n_positions']}")
    inputs = {
        "shard": {"stage": Input(shard_loc.uri, shards.fingerprint)},
        "tokenizer": {TOKENIZER_FILE: Input(vocab_loc.child(TOKENIZER_FILE).uri, vocab.file(TOKENIZER_FILE).sha256)},
    }
    if params.align != "none":
        inputs["alignment"] = {ALIGNMENT: Input(vocab_loc.child(ALIGNMENT).uri, vocab.file(ALIGNMENT).sha256)}
    if params.accelerate_config:
        loc = Location.of(params.accelerate_config)
        inputs["accelerate_config"] = {loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])}
    train = params.model_dump(exclude={"preset", "model", *OPTIONS}) | {"block_size": block}
    train["alpha"] = params.alpha if params.alpha is not None else vocab.params.get("alpha", 0.3)
    libraries = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "accelerate")}
    unit = Unit(
        stage=STAGE,
        name=STAGE,
        out=run.stage(STAGE).uri,
        code_version=code_version(__name__),
        params={"model": model, "train": train, "langs": langs, "align": params.align, "libraries": libraries},
        inputs=inputs,
        options=params.model_dump(include=set(OPTIONS)),
    )
    ckpt = run.checkpoints(STAGE, unit.fingerprint)
    if not ckpt.is_local:
        raise ValueError(f"{run.root}: training needs the run directory on a local or mounted (shared) file system")
    return replace(unit, options=unit.options | {"checkpoints": ckpt.path})


def spec_of(unit: Unit) -> dict[str, Any]:
    """What the training processes read (SPEC.json): inputs, model, hyper-parameters, folders."""
    ckpt = unit.options["checkpoints"]
    p = unit.params
    return {
        "shards": unit.input("shard").uri,
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
    }


def command(unit: Unit, spec_path: str) -> list[str]:
    """The launch command: plain python, torchrun (CPU, several processes) or accelerate launch."""
    n, how = unit.params["train"]["num_processes"], unit.options["launcher"]
    if how == "auto":
        import torch

        how = (
            "accelerate"
            if torch.cuda.is_available() or unit.options["accelerate_config"]
            else ("torchrun" if n > 1 else "python")
        )
    body = ["-m", train_loop.__name__, spec_path]
    if how == "python":
        if n != 1:
            raise ValueError("launcher 'python' runs one process; use torchrun or accelerate for num_processes > 1")
        return [sys.executable, *body]
    if how == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *body]
    cfg = ["--config_file", unit.options["accelerate_config"]] if unit.options["accelerate_config"] else []
    return [sys.executable, "-m", "accelerate.commands.launch", *cfg, f"--num_processes={n}", *body]


def train_unit(unit: Unit) -> Ref:
    """Train (or resume) in subprocesses, then commit the final model folder as the stage."""
    ckpt = Location(unit.options["checkpoints"])
    spec = spec_of(unit)

    def build(aside: Aside) -> dict[str, Any]:
        final = ckpt.child("final")
        if not final.child(train_loop.SUMMARY).exists():
            ckpt.makedirs()
            spec_path = ckpt.child("spec.json")
            with spec_path.open("wb") as f:
                f.write(json.dumps(spec, indent=2, sort_keys=True).encode())
            launch(command(unit, spec_path.path), ckpt)
        else:
            logger().info("train: %s already holds the trained model; committing it", final)
        for name in sorted(final.fs.ls(final.path, detail=False)):
            name = name.rstrip("/").rsplit("/", 1)[-1]
            _copy(final.child(name), aside.path(name))
        vocab = Location(spec["vocab"])
        for name in TOKENIZER_FILES:
            if vocab.child(name).exists():
                _copy(vocab.child(name), aside.path(name))
        with final.child(train_loop.SUMMARY).open("rb") as f:
            return json.loads(f.read())

    ref = ensure(unit, build)
    for name in ckpt.subfolders():  # the model is committed: its checkpoints are no longer needed
        if name.startswith(train_loop.STEP_PREFIX) or name == "final":
            ckpt.fs.rm(ckpt.child(name).path, recursive=True)
    return ref


def launch(cmd: list[str], ckpt: Location) -> None:
    """Run the training processes, streaming their output to the Prefect log and progress artifact."""
    log = logger()
    log.info("train: %s (checkpoints in %s)", " ".join(cmd), ckpt)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    tail: deque[str] = deque(maxlen=20)
    shown = Progress()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith(train_loop.PROGRESS):
                shown.update(json.loads(line[len(train_loop.PROGRESS) :]))
            elif line:
                tail.append(line)
                log.info("train: %s", line)
    if proc.returncode:
        raise TrainingFailed(
            f"training exited with code {proc.returncode}; a retry resumes from the last checkpoint "
            f"in {ckpt}. Last output:\n" + "\n".join(tail)
        )


class TrainingFailed(RuntimeError):
    """The training processes failed; their checkpoints stay for the next attempt."""


class Progress:
    """Training progress to the log and, inside a Prefect run, a progress artifact."""

    def __init__(self):
        self.artifact = None

    def update(self, row: dict[str, Any]) -> None:
        log = logger()
        progress.training(row["step"], row["max_steps"], row.get("loss"))
        if "loss" in row:
            log.info(
                "train: step %d/%d loss %.4f lr %.2e grad-norm %.2f %.0f tokens/s",
                row["step"],
                row["max_steps"],
                row["loss"],
                row["lr"],
                row["grad_norm"],
                row["tokens_per_s"],
            )
        if "valid_loss" in row:
            log.info(
                "train: step %d valid loss %s",
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
                self.artifact = create_progress_artifact(percent, description="training steps done")
            else:
                update_progress_artifact(self.artifact, percent)
        except Exception as e:  # an artifact is a convenience; never fail training for it
            log.debug("train: no progress artifact (%s)", e)


def _copy(src: Location, dst: Location) -> None:
    with src.open("rb") as f, dst.open("wb") as g:
        shutil.copyfileobj(f, g, 4 << 20)


# ---------------------------------------------------------------- Prefect tasks

plan_task = plain_step("train-plan")(plan)
train_task = step(name="train-model", retries=2)(train_unit)
