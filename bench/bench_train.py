"""Training throughput (tokens/s) of our loop against Hugging Face ``Trainer``: same model, same shards, one run.

Ours: the train stage's spec (``train.plan`` + ``train.spec_of``) with the checkpoint and final folders moved to
a fresh temp folder, no checkpoints, no evaluation inside the timed window, run by ``train_loop.run`` in this process.
Trainer (the usual way): ``Trainer`` + ``DataCollatorForLanguageModeling(mlm=False)`` on the same model class and
config (``train_loop.build_model``), the same batch and block size, lr, AdamW betas / weight decay / eps, warm-up +
cosine to the same floor, grad clip, fp32 on CPU, no eval, no saving, no logging, no reporting, on the train shards
concatenated and cut into blocks (the classic ``group_texts``), built before any timing.

Fair because: both sides run in this process (same imports warmed, same ``torch.set_num_threads``, no subprocess
start-up to subtract), alternate ``--repeat`` times (best of each kept), and are timed over the same window: the end of
optimiser step 1 to the end of step N (ours from the ``XLMFLOW-PROGRESS`` rows' ``elapsed_s``, Trainer from
``on_step_end``), so model build, data verification and the first step's warm-up are out on both sides. Both run
N + 1 steps; the extra step takes our final evaluation and model save, outside the window. Trainer uses
``optim="adamw_torch_fused"`` (its default in transformers 5), the same fused ``torch.optim.AdamW`` as ours.

    python bench/bench_train.py --run-dir RUN [--steps N] [--repeat R] [--quick] [--preset P] [--batch-size B]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from xlmflow.storage import Location, RunDir, read_table
from xlmflow.storage.shards import data_files
from xlmflow.tasks import train
from xlmflow.tasks.train import loop as train_loop


def ours(spec: dict, work: str) -> tuple[int, float]:
    """(steps timed, seconds) between the progress rows of step 1 and step N of one run of the loop."""
    spec = spec | {"checkpoints": os.path.join(work, "checkpoints"), "final": os.path.join(work, "final")}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_loop.run(spec)
    rows = [json.loads(x[len(train_loop.PROGRESS) :]) for x in out.getvalue().splitlines() if x.startswith("XLMFLOW")]
    at = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r}
    last = spec["train"]["max_steps"] - 1
    return last - 1, at[last] - at[1]


def blocks_dataset(spec: dict):
    """The train shards' tokens, concatenated and cut into ``block_size`` blocks (``group_texts``)."""
    import datasets

    block = spec["train"]["block_size"]
    tables = [read_table(Location(u), ["input_ids"]) for u in data_files(spec["shards"], "train")]
    tokens = np.concatenate([pc.list_flatten(t.column("input_ids")).to_numpy() for t in tables]).astype(np.int64)
    tokens = tokens[: len(tokens) // block * block].reshape(-1, block)
    column = pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel()), block)
    return datasets.Dataset(pa.table({"input_ids": column}))


def trainer(spec: dict, dataset, tokenizer, work: str) -> tuple[int, float]:
    """(steps timed, seconds) from ``on_step_end`` of step 1 to that of step N of one ``trainer.train()``."""
    from transformers import (
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    t = spec["train"]
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks[state.global_step] = time.perf_counter()

    args = TrainingArguments(
        output_dir=work,
        max_steps=t["max_steps"],
        per_device_train_batch_size=t["batch_size"],
        gradient_accumulation_steps=t["grad_accum"],
        learning_rate=t["lr"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": t["min_lr_ratio"]},
        warmup_steps=t["warmup_steps"],
        optim="adamw_torch_fused",
        weight_decay=t["weight_decay"],
        adam_beta1=t["beta1"],
        adam_beta2=t["beta2"],
        adam_epsilon=1e-8,
        max_grad_norm=t["grad_clip"],
        seed=t["seed"],
        use_cpu=True,
        bf16=False,
        fp16=False,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    torch.manual_seed(t["seed"])
    model = train_loop.build_model(spec)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    hf = Trainer(model=model, args=args, data_collator=collator, train_dataset=dataset, callbacks=[Clock()])
    hf.remove_callback(PrinterCallback)  # its end-of-training metrics line; nothing else is printed
    hf.train()
    last = t["max_steps"] - 1
    return last - 1, marks[last] - marks[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a run directory with committed vocab and shard stages")
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per timed run (one more is run)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs per side; the best of each is kept")
    ap.add_argument("--quick", action="store_true", help="10 steps, a smoke test")
    ap.add_argument("--preset", default="demo", choices=sorted(train.PRESETS))
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    args = ap.parse_args()
    steps = 10 if args.quick else args.steps
    if steps < 2:
        ap.error("--steps must be at least 2 (the window runs from step 1 to step N)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    extra = {} if args.batch_size is None else {"batch_size": args.batch_size}
    params = train.TrainParams(
        preset=args.preset,
        max_steps=steps + 1,  # the last step holds our final eval + save, outside the window
        eval_every=steps + 10,
        checkpoint_every=steps + 10,
        log_every=steps,
        precision="fp32",
        **extra,
    )
    spec = train.spec_of(train.plan(RunDir.of(args.run_dir), params))
    t = spec["train"]

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our final save's "Writing model shards" bar (outside the window)

    tokenizer = AutoTokenizer.from_pretrained(Location(spec["vocab"]).path)
    dataset = blocks_dataset(spec)
    n_params = sum(p.numel() for p in train_loop.build_model(spec).parameters())
    tokens_per_step = t["batch_size"] * t["block_size"] * t["grad_accum"]
    print(
        f"model: {args.preset}, {n_params:,} parameters; batch {t['batch_size']} x block {t['block_size']}"
        f" x accum {t['grad_accum']}; {steps + 1} steps run, steps 1 -> {steps} timed; threads {args.threads};"
        f" Trainer dataset {len(dataset):,} blocks"
    )

    best: dict[str, tuple[int, float]] = {}
    for i in range(args.repeat):
        for side in ("Trainer", "ours")[:: 1 if i % 2 == 0 else -1]:  # alternate who goes first
            with tempfile.TemporaryDirectory() as work:
                got = ours(spec, work) if side == "ours" else trainer(spec, dataset, tokenizer, work)
            if side not in best or got[1] < best[side][1]:
                best[side] = got

    speed = {side: n * tokens_per_step / s for side, (n, s) in best.items()}
    print(f"{'side':<8} {'steps':>6} {'tokens':>10} {'seconds':>8} {'tokens/s':>10} {'vs Trainer':>10}")
    for side in ("Trainer", "ours"):
        n, s = best[side]
        ratio = speed[side] / speed["Trainer"]
        print(f"{side:<8} {n:>6} {n * tokens_per_step:>10,} {s:>8.2f} {speed[side]:>10,.0f} {ratio:>9.2f}x")
    print(f"ours / Trainer: {speed['ours'] / speed['Trainer']:.2f}x (goal >= 1.0x on CPU)")


if __name__ == "__main__":
    main()
