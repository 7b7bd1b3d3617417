"""The training loop: one process of a training job, alone or one of many under torchrun / ``accelerate launch``.

    python -m xlmflow.tasks.train.loop SPEC.json

``SPEC.json`` (written by :mod:`.train`) names the shard and vocab stages, the model config, the
hyper-parameters and two folders: ``checkpoints`` (``step-NNNNNNN/`` from ``accelerator.save_state``,
written aside and renamed, the last ``keep_checkpoints`` kept) and ``final`` (the saved model). A
process that finds a checkpoint resumes from it (model, optimiser, scheduler, RNG, data position),
so a killed or failed job started again continues where it was and ends with the same weights.

Nothing in a checkpoint is unpickled: the model is ``model.safetensors``; optimiser and RNG states
load with ``torch.load(weights_only=True)``; the scheduler and data position are JSON in
``xlmflow_state.json`` (Accelerate's ``register_for_checkpointing`` would pickle them and load
them with ``weights_only=False``). That file also holds the unit's fingerprint: a checkpoint of
another configuration (copied, or a fingerprint-prefix clash) is never resumed.

One optimiser step = ``grad_accum`` micro-batches per rank. The loss is the sum of token losses
divided by the number of target tokens of the whole step over all ranks (not a mean of means,
transformers#34191), so accumulation and world size do not change what is optimised.

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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xlmflow.storage import Location, read_table
from xlmflow.tasks.common.specials import EOS, PAD, TOKENIZER_FILE, lang_tag
from xlmflow.tasks.train.data import IGNORE, BlockLoader, BlockSpec, valid_blocks

if TYPE_CHECKING:  # torch and the model are imported where used: the CLI imports this module for its constants
    import torch

PROGRESS = "XLMFLOW-PROGRESS "
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STEP_PREFIX = "step-"
STATE = "xlmflow_state.json"  # per checkpoint: fingerprint, scheduler and loader state (JSON, never pickled)


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine (or linear) decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def latest_checkpoint(folder: Path, fingerprint: str | None = None) -> Path | None:
    """The last complete checkpoint in ``folder``; with ``fingerprint``, the last one written by that
    configuration (others, or ones without an :data:`STATE`, are passed over with a message)."""
    done = sorted(p for p in folder.glob(f"{STEP_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))
    if fingerprint is None:
        return done[-1] if done else None
    for p in reversed(done):
        owner = checkpoint_owner(p)
        if owner == fingerprint:
            return p
        whose = f"it was written by configuration {owner[:16]}" if owner else "it records no configuration"
        print(f"not resuming from {p}: {whose}, not {fingerprint[:16]}")
    return None


def checkpoint_owner(path: Path) -> str | None:
    """The fingerprint recorded in a checkpoint (None: none, or unreadable)."""
    try:
        return json.loads((path / STATE).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def build_model(spec: dict):
    """The model of the spec: GPT-2 sized by the preset/overrides, language tags, alignment mode."""
    from tokenizers import Tokenizer

    from xlmflow.tasks.train.model import XlmGPT2Config, XlmGPT2LMHeadModel

    with Location(spec["vocab"]).child(TOKENIZER_FILE).open("rb") as f:
        tok = Tokenizer.from_str(f.read().decode("utf-8"))
    tag_ids = [tok.token_to_id(lang_tag(lang)) for lang in spec["langs"]]
    if None in tag_ids:
        raise ValueError(f"{spec['vocab']}: the tokenizer has no tag for {spec['langs'][tag_ids.index(None)]!r}")
    anchors = None
    if spec["align"] != "none":
        table = read_table(Location(spec["alignment"]), ["token_id", "anchor_id"])
        anchors = np.arange(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
        anchors[table.column("token_id").to_numpy()] = table.column("anchor_id").to_numpy()
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    config = XlmGPT2Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        lang_token_ids=tag_ids,
        langs=spec["langs"],
        anchor_ids=anchors.tolist() if spec["align"] == "tie" else None,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        **spec["model"],
    )
    model = XlmGPT2LMHeadModel(config)
    if spec["align"] == "init":
        model.init_aligned(anchors.tolist())
    return model


def token_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses, number of targets) of a batch; tags and padding are not targets."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], lang_ids=batch["lang_ids"]).logits
    # shift the labels, not the logits: slicing [B, T, V] logits would copy them
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


def run(spec: dict) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from xlmflow.tasks.train.model import save_with_code

    t = spec["train"]
    gpu = torch.cuda.is_available()
    bf16 = t["precision"] == "bf16" or (t["precision"] == "auto" and gpu and torch.cuda.is_bf16_supported())
    # cpu=True also makes Accelerate see a torchrun job on CPUs (gloo); without it each process runs alone
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not gpu)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    main = accelerator.is_main_process
    set_seed(t["seed"])
    ckdir, final = Path(spec["checkpoints"]), Path(spec["final"])
    ckdir.mkdir(parents=True, exist_ok=True)

    model = build_model(spec)
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t["warmup_steps"], t["max_steps"], t["schedule"], t["min_lr_ratio"])
    )
    spec_data = BlockSpec(block_size=t["block_size"], batch_size=t["batch_size"], alpha=t["alpha"], seed=t["seed"])
    record = t.get("record_documents", False)
    loader = BlockLoader(spec["shards"], "train", spec_data, rank, world, spec["langs"], tag_ids, record=record)
    valid = {
        lang: valid_blocks(spec["shards"], lang, t["block_size"], t["eval_blocks"], tag_ids, i + 1)
        for i, lang in enumerate(spec["langs"])
    }
    # the scheduler is not prepared (a prepared one steps once per process and step) nor registered for
    # checkpointing (Accelerate pickles registered objects): it is saved with the loader in STATE
    model, optimizer = accelerator.prepare(model, optimizer)
    fingerprint = spec.get("fingerprint")

    start = 0
    last = latest_checkpoint(ckdir, fingerprint)
    if last is not None:
        load_checkpoint(accelerator, last, scheduler, loader)
        start = loader.step // t["grad_accum"]
        accelerator.print(f"resumed from checkpoint {last.name} at step {start}")
    metrics = ckdir / METRICS
    if main:
        kept = [r for r in _read_rows(metrics) if r["step"] <= start]
        metrics.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    accelerator.print(
        f"training {sum(p.numel() for p in model.parameters()):,} parameters on {world} x {device}, "
        f"{'bf16' if bf16 else 'fp32'}, steps {start} -> {t['max_steps']}, mixture "
        + ", ".join(f"{k}={v:.3f}" for k, v in loader.probs.items())
    )

    def to_device(b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(device) for k, v in b.items()}

    def evaluate() -> dict[str, float]:
        plain = accelerator.unwrap_model(model)
        plain.eval()
        out = {}
        with torch.no_grad(), accelerator.autocast():
            for lang, blocks in valid.items():
                total = torch.zeros(2, dtype=torch.float64, device=device)
                mine = np.arange(rank, len(blocks["input_ids"]), world)
                for lo in range(0, len(mine), t["batch_size"]):
                    rows = mine[lo : lo + t["batch_size"]]
                    loss, n = token_loss(plain, to_device({k: v[rows] for k, v in blocks.items()}))
                    total += torch.tensor([loss.item(), n], dtype=torch.float64, device=device)
                total = accelerator.reduce(total, "sum")
                out[lang] = float(total[0] / total[1]) if total[1] else float("nan")
        plain.train()
        return out

    model.train()
    tokens_per_step = t["batch_size"] * t["block_size"] * t["grad_accum"] * world
    began, window, window_start = time.perf_counter(), start, time.perf_counter()
    for step in range(start, t["max_steps"]):
        batches = [to_device(loader.next_batch()) for _ in range(t["grad_accum"])]
        targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        total = accelerator.reduce(torch.tensor(float(targets), device=device), "sum")
        loss_sum = torch.zeros((), device=device)
        for i, b in enumerate(batches):
            with accelerator.no_sync(model) if i < len(batches) - 1 else nullcontext():
                loss, _ = token_loss(model, b)
                accelerator.backward(loss * world / total)
            loss_sum += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), t["grad_clip"])
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        row = None
        if done % t["log_every"] == 0 or done == t["max_steps"] or done == 1:
            train_loss = float(accelerator.reduce(loss_sum, "sum") / total)
            row = {
                "step": done,
                "loss": train_loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": done * tokens_per_step,
            }
        if done % t["eval_every"] == 0 or done == t["max_steps"]:
            row = (row or {"step": done}) | {"valid_loss": evaluate()}
        if row and main:
            with metrics.open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            now = time.perf_counter()
            speed = (done - window) * tokens_per_step / max(now - window_start, 1e-9)
            window, window_start = done, now
            progress = row | {"max_steps": t["max_steps"], "tokens_per_s": speed, "elapsed_s": now - began}
            progress["effective_epochs"] = loader.effective_epochs()
            print(PROGRESS + json.dumps(progress), flush=True)
        if done % t["checkpoint_every"] == 0 and done < t["max_steps"]:
            state = {"fingerprint": fingerprint, "scheduler": scheduler.state_dict(), "loader": loader.state_dict()}
            save_checkpoint(accelerator, ckdir, done, t["keep_checkpoints"], state)

    if record:  # which documents each rank read (tests check that ranks are disjoint)
        (ckdir / f"documents-rank-{rank}.json").write_text(json.dumps(loader.documents_read()))
    accelerator.wait_for_everyone()
    summary = {}
    if main:
        rows = _read_rows(metrics)
        losses = [r for r in rows if "loss" in r]
        summary = {
            "steps": t["max_steps"],
            "tokens": t["max_steps"] * tokens_per_step,
            "parameters": sum(p.numel() for p in model.parameters()),
            "loss_first": losses[0]["loss"],
            "loss_last": losses[-1]["loss"],
            "valid_loss": rows[-1]["valid_loss"],
            "effective_epochs": loader.effective_epochs(),
            "world_size": world,
        }
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_with_code(accelerator.unwrap_model(model), tmp)
        shutil.copyfile(metrics, tmp / METRICS)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        print(PROGRESS + json.dumps({"step": t["max_steps"], "max_steps": t["max_steps"], "done": True}), flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def save_checkpoint(accelerator, ckdir: Path, step: int, keep: int, state: dict) -> None:
    """``accelerator.save_state`` (model as safetensors) and ``state`` as JSON into ``step-N.tmp``,
    renamed to ``step-N`` once every rank has written."""
    name = f"{STEP_PREFIX}{step:07d}"
    tmp = ckdir / f"{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE).write_text(json.dumps(state, sort_keys=True))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(ckdir / name, ignore_errors=True)  # one not resumed (another configuration's) gives way
        tmp.rename(ckdir / name)
        done = sorted(p for p in ckdir.glob(f"{STEP_PREFIX}*") if not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, path: Path, scheduler, loader) -> None:
    """Model (safetensors), optimiser and RNG (``weights_only=True``: tensors and plain values only, no
    code run while loading), then the scheduler and data position from :data:`STATE`."""
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    state = json.loads((path / STATE).read_text())
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])


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
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
