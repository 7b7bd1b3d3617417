"""The training loop: one process of a training job, alone or one of many under torchrun / ``accelerate launch``.

    python -m xlmflow.tasks.train.loop SPEC.json

``SPEC.json`` (written by :mod:`.train`) names the shard and vocab stages, the model config, the
hyper-parameters and two folders: ``checkpoints`` (``step-NNNNNNN/`` from ``accelerator.save_state``,
written aside and renamed, the last ``keep_checkpoints`` kept) and ``final`` (the saved model). A
process that finds a checkpoint resumes from it (model, optimiser, scheduler, RNG, data position),
so a killed or failed job started again continues where it was and ends with the same weights.

Nothing in a checkpoint is unpickled; a checkpoint of another configuration is never resumed (:mod:`.checkpoints`).

One optimiser step = ``grad_accum`` micro-batches per rank. The loss is the sum of token losses
divided by the number of target tokens of the whole step over all ranks (not a mean of means,
transformers#34191), so accumulation and world size do not change what is optimised.

A configuration that cannot train (a ValueError, TypeError or KeyError while setting up: a model shape, an unknown
activation, bf16 on a GPU without it) prints ``XLMFLOW-CONFIG-ERROR <error>``, exits with :data:`CONFIG_EXIT`; the
parent raises a permanent error, not retried.

Rank 0 prints one ``XLMFLOW-PROGRESS {json}`` line every ``log_every`` steps (the Prefect task reads
them) and appends the deterministic metrics (loss, lr, grad norm, valid loss per language) to
``metrics.jsonl``; rows after the checkpoint a resumed run starts from are dropped, so the file of a
resumed run equals the file of a run never stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xlmflow.tasks.common.precision import suit, use_bf16
from xlmflow.tasks.train.build import build_model
from xlmflow.tasks.train.checkpoints import STATE, STEP_PREFIX, latest_checkpoint, load_checkpoint, save_checkpoint  # noqa: F401
from xlmflow.tasks.train.continued import save_optimizer, start_from
from xlmflow.tasks.train.data import IGNORE, BlockLoader, BlockSpec, valid_blocks

if TYPE_CHECKING:  # torch and the model are imported where used: the CLI imports this module for its constants
    import torch

PROGRESS = "XLMFLOW-PROGRESS "
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RESUMED = "resumed from checkpoint"  # how a process that resumes says so (the parent notes it)
CONTINUED = "continued from"  # how a continued training (incremental run) says what it started from
#: a process whose configuration cannot train prints this and the error, then exits with CONFIG_EXIT; the parent
#: reads the line (launchers exit 1 whatever their processes exited with) and does not retry
CONFIG_ERROR = "XLMFLOW-CONFIG-ERROR "
CONFIG_EXIT = 3


class ConfigError(ValueError):
    """Setting up training failed on the configuration (model shape or keys, precision...): no retry can mend it."""


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine (or linear) decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def token_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses, number of targets) of a batch; tags and padding are not targets."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], lang_ids=batch["lang_ids"]).logits
    # shift the labels, not the logits: slicing [B, T, V] logits would copy them
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


@dataclass
class Trainer:
    """One process's training: what :func:`setup` builds and every later step reads."""

    t: dict  # the spec's hyper-parameters
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loader: BlockLoader
    valid: dict[str, dict[str, np.ndarray]]  # per language: the validation blocks
    ckdir: Path
    final: Path
    fingerprint: str | None
    bf16: bool
    start: int = 0  # the step this process starts (or resumes) from
    continued: dict | None = None  # a continued training's base (incremental runs): the spec's ``continued``

    @property
    def metrics(self) -> Path:
        return self.ckdir / METRICS

    @property
    def tokens_per_step(self) -> int:
        t = self.t
        return t["batch_size"] * t["block_size"] * t["grad_accum"] * self.accelerator.num_processes

    def to_device(self, b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        return {k: torch.from_numpy(v).to(self.accelerator.device) for k, v in b.items()}


@dataclass
class Clock:
    """Wall-clock bookkeeping of the progress lines: tokens per second since the previous line."""

    began: float
    window: int  # the step of the previous line
    window_start: float


def run(spec: dict) -> dict:
    """Train (or resume) to ``max_steps``, then save the final model; returns the summary (rank 0's)."""
    tr = setup(spec)
    tr.start = resume(tr)
    tr.model.train()
    clock = Clock(time.perf_counter(), tr.start, time.perf_counter())
    for step in range(tr.start, tr.t["max_steps"]):
        loss_sum, total, grad_norm, lr = train_step(tr)
        done = step + 1
        row = metrics_row(tr, done, loss_sum, total, grad_norm, lr)
        if row and tr.accelerator.is_main_process:
            report(tr, row, clock)
        if done % tr.t["checkpoint_every"] == 0 and done < tr.t["max_steps"]:
            checkpoint(tr, done)
    return finish(tr)


def setup(spec: dict) -> Trainer:
    """Accelerator, seed, model, AdamW, schedule, data: everything a step needs. A ValueError, TypeError or
    KeyError here comes from the configuration and becomes a :class:`ConfigError` (no retry can mend it)."""
    try:
        return _setup(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{type(e).__name__}: {' '.join(str(e).split())}") from e


def _setup(spec: dict) -> Trainer:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = spec["train"]
    bf16 = use_bf16(t["precision"], gpu := torch.cuda.is_available())
    # cpu=True also makes Accelerate see a torchrun job on CPUs (gloo); without it each process runs alone
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not gpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(t["seed"])
    ckdir, final = Path(spec["checkpoints"]), Path(spec["final"])
    ckdir.mkdir(parents=True, exist_ok=True)

    model = suit(build_model(spec), bf16, gpu)
    tag_ids = dict(zip(spec["langs"], model.config.lang_token_ids))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t["lr"],
        betas=(t["beta1"], t["beta2"]),
        eps=1e-8,
        fused=True,  # one kernel for all parameters, on CPUs too
    )
    if spec.get("init_from"):  # an incremental run's continued training
        accelerator.print(CONTINUED + " " + start_from(spec, model, optimizer))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t["warmup_steps"], t["max_steps"], t["schedule"], t["min_lr_ratio"])
    )
    spec_data = BlockSpec(
        block_size=t["block_size"],
        batch_size=t["batch_size"],
        alpha=t["alpha"],
        seed=t["seed"],
        pair_share=t.get("parallel_share") or 0.0,
        pair_schedule=t.get("parallel_schedule", "constant"),
        max_steps=t["max_steps"],
    )
    record = t.get("record_documents", False)
    loader = BlockLoader(
        spec["shards"],
        "train",
        spec_data,
        rank,
        world,
        spec["langs"],
        tag_ids,
        record=record,
        fresh=spec.get("fresh"),
        replay=t.get("replay", 0.0),
    )
    valid = {
        lang: valid_blocks(spec["shards"], lang, t["block_size"], t["eval_blocks"], tag_ids, i + 1)
        for i, lang in enumerate(spec["langs"])
    }
    # the scheduler is not prepared (a prepared one steps once per process and step) nor registered for
    # checkpointing (Accelerate pickles registered objects): it is saved with the loader in STATE
    model, optimizer = accelerator.prepare(model, optimizer)
    fingerprint = spec.get("fingerprint")
    tr = Trainer(t, accelerator, model, optimizer, scheduler, loader, valid, ckdir, final, fingerprint, bf16)
    return replace(tr, continued=spec.get("continued"))


def resume(tr: Trainer) -> int:
    """Load the last checkpoint of this configuration, if any, and keep the metrics rows up to it; returns the
    step training starts from."""
    t, accelerator = tr.t, tr.accelerator
    start = 0
    last = latest_checkpoint(tr.ckdir, tr.fingerprint)
    if last is not None:
        load_checkpoint(accelerator, last, tr.scheduler, tr.loader)
        start = tr.loader.step // t["grad_accum"]
        accelerator.print(f"{RESUMED} {last.name} at step {start}")
    if accelerator.is_main_process:
        kept = [r for r in _read_rows(tr.metrics) if r["step"] <= start]
        tr.metrics.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    accelerator.print(
        f"training {sum(p.numel() for p in tr.model.parameters()):,} parameters on {accelerator.num_processes} x "
        f"{accelerator.device}, {'bf16' if tr.bf16 else 'fp32'}, steps {start} -> {t['max_steps']}, mixture "
        + ", ".join(f"{k}={v:.3f}" for k, v in tr.loader.probs.items())
    )
    return start


def train_step(tr: Trainer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One optimiser step: ``grad_accum`` micro-batches, clip, AdamW, schedule. Returns (sum of this rank's token
    losses, targets of the step over all ranks, gradient norm, the learning rate the step used)."""
    batches = [tr.to_device(tr.loader.next_batch()) for _ in range(tr.t["grad_accum"])]
    loss_sum, total = accumulate(tr.accelerator, tr.model, batches)
    grad_norm = tr.accelerator.clip_grad_norm_(tr.model.parameters(), tr.t["grad_clip"])
    lr = tr.scheduler.get_last_lr()[0]
    tr.optimizer.step()
    tr.scheduler.step()
    tr.optimizer.zero_grad(set_to_none=True)
    return loss_sum, total, grad_norm, lr


def accumulate(accelerator, model, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one step's micro-batches: the gradients of (sum of token losses) / (targets of the
    whole step over all ranks), so accumulation and world size do not change what is optimised (not a mean of
    means, transformers#34191). Returns (sum of this rank's token losses, targets over all ranks)."""
    import torch

    world, device = accelerator.num_processes, accelerator.device
    targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
    total = accelerator.reduce(torch.tensor(float(targets), device=device), "sum")
    loss_sum = torch.zeros((), device=device)
    for i, b in enumerate(batches):
        with accelerator.no_sync(model) if i < len(batches) - 1 else nullcontext():
            loss, _ = token_loss(model, b)
            accelerator.backward(loss * world / total)
        loss_sum += loss.detach()
    return loss_sum, total


def metrics_row(tr: Trainer, done: int, loss_sum, total, grad_norm, lr: float) -> dict | None:
    """The metrics of step ``done`` when it logs (every ``log_every`` steps, the first and the last) or evaluates
    (every ``eval_every`` steps and the last); None otherwise. Every rank calls it (the reductions are collective)."""
    t = tr.t
    row = None
    if done % t["log_every"] == 0 or done == t["max_steps"] or done == 1:
        train_loss = float(tr.accelerator.reduce(loss_sum, "sum") / total)
        row = {
            "step": done,
            "loss": train_loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": done * tr.tokens_per_step,
        }
    if done % t["eval_every"] == 0 or done == t["max_steps"]:
        row = (row or {"step": done}) | {"valid_loss": evaluate(tr)}
    return row


def evaluate(tr: Trainer) -> dict[str, float]:
    """Validation loss per language (nats per target token), the blocks split over the ranks."""
    import torch

    accelerator, t = tr.accelerator, tr.t
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    plain = accelerator.unwrap_model(tr.model)
    plain.eval()
    out = {}
    with torch.no_grad(), accelerator.autocast():
        for lang, blocks in tr.valid.items():
            total = torch.zeros(2, dtype=torch.float64, device=device)
            mine = np.arange(rank, len(blocks["input_ids"]), world)
            for lo in range(0, len(mine), t["batch_size"]):
                rows = mine[lo : lo + t["batch_size"]]
                loss, n = token_loss(plain, tr.to_device({k: v[rows] for k, v in blocks.items()}))
                total += torch.tensor([loss.item(), n], dtype=torch.float64, device=device)
            total = accelerator.reduce(total, "sum")
            out[lang] = float(total[0] / total[1]) if total[1] else float("nan")
    plain.train()
    return out


def report(tr: Trainer, row: dict, clock: Clock) -> None:
    """Rank 0: append ``row`` to the metrics file and print it as a progress line, with the speed."""
    with tr.metrics.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    done, now = row["step"], time.perf_counter()
    speed = (done - clock.window) * tr.tokens_per_step / max(now - clock.window_start, 1e-9)
    clock.window, clock.window_start = done, now
    progress = row | {"max_steps": tr.t["max_steps"], "tokens_per_s": speed, "elapsed_s": now - clock.began}
    progress["effective_epochs"] = tr.loader.effective_epochs()
    print(PROGRESS + json.dumps(progress), flush=True)


def checkpoint(tr: Trainer, done: int) -> None:
    """Save the state after step ``done``: model, optimiser and RNG (Accelerate), scheduler and data position."""
    state = {"fingerprint": tr.fingerprint, "scheduler": tr.scheduler.state_dict(), "loader": tr.loader.state_dict()}
    save_checkpoint(tr.accelerator, tr.ckdir, done, tr.t["keep_checkpoints"], state)


def finish(tr: Trainer) -> dict:
    """After the last step: the documents each rank read (when asked), then rank 0 saves the model folder
    (written aside, renamed to ``final``) with the metrics, the summary and those documents."""
    from xlmflow.tasks.common.model import save_with_code

    accelerator, t, loader = tr.accelerator, tr.t, tr.loader
    if t.get("record_documents", False):  # which documents each rank read (tests check that ranks are disjoint)
        (tr.ckdir / f"documents-rank-{accelerator.process_index}.json").write_text(json.dumps(loader.documents_read()))
    accelerator.wait_for_everyone()
    summary = {}
    if accelerator.is_main_process:
        rows = _read_rows(tr.metrics)
        losses = [r for r in rows if "loss" in r]
        summary = {
            "steps": t["max_steps"],
            "tokens": t["max_steps"] * tr.tokens_per_step,
            "parameters": sum(p.numel() for p in tr.model.parameters()),
            "loss_first": losses[0]["loss"],
            "loss_last": losses[-1]["loss"],
            "valid_loss": rows[-1]["valid_loss"],
            "effective_epochs": loader.effective_epochs(),
            "world_size": accelerator.num_processes,
            "precision": "bf16" if tr.bf16 else "fp32",
        }
        if tr.continued:
            c = tr.continued
            summary |= {"continued_from": c, "total_steps": c["total_steps"] + t["max_steps"]}
        final = tr.final
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_with_code(accelerator.unwrap_model(tr.model), tmp)
        save_optimizer(tr.optimizer, tmp)  # where the next continued training starts
        shutil.copyfile(tr.metrics, tmp / METRICS)
        for read in sorted(tr.ckdir.glob("documents-rank-*.json")):  # committed with the model: checkpoints go
            shutil.copyfile(read, tmp / read.name)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        print(PROGRESS + json.dumps({"step": t["max_steps"], "max_steps": t["max_steps"], "done": True}), flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _read_rows(path: Path) -> list[dict]:
    """The rows of a metrics file; a last line cut short by a killed writer is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m xlmflow.tasks.train.loop SPEC.json", file=sys.stderr)
        return 2
    try:
        run(json.loads(Path(args[0]).read_text()))
    except ConfigError as e:
        print(f"{CONFIG_ERROR}{e}", flush=True)
        return CONFIG_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
