"""The fine-tuning process: the pretrained model, trained on prompt -> target examples (``task`` translate) or as a
sequence classifier on labelled texts of one language (``task`` classify).

    python -m xlmflow.tasks.finetune.loop SPEC.json

``SPEC.json`` (written by :mod:`.stage`) names the task, the pretrained model folder, the data (the pair files and
directions, or the labelled set, its language and tokenizer) and the hyper-parameters. The step, the loss (target
tokens only, summed over the step and divided by its targets: the
train loop's :func:`~xlmflow.tasks.train.loop.accumulate`), the schedule, the checkpoints (``step-NNNNNNN/``,
the configuration's fingerprint in each, :mod:`xlmflow.tasks.train.checkpoints`), the progress lines and the
configuration-error exit are the pretraining loop's, so a killed fine-tune resumes to the same weights as one never
stopped, and the stage's launcher (:func:`xlmflow.tasks.train.stage.launch`) reads this process as it reads training.
``num_processes`` processes (torchrun on CPU, accelerate launch on GPUs) each draw the step's whole batch and take
their own rows of it (``rank::world``); the gradients are averaged by DDP, so what is optimised is the whole batch's
loss, as in one process.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlmflow.storage.shards import Shard
from xlmflow.tasks.common.labelled_sets import EVAL_ROWS
from xlmflow.tasks.common.precision import suit, use_bf16
from xlmflow.tasks.finetune.data import LabelledExamples, StepLoader, TranslationExamples
from xlmflow.tasks.train.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from xlmflow.tasks.train.loop import CONFIG_ERROR, CONFIG_EXIT, PROGRESS, RESUMED, accumulate, lr_factor
from xlmflow.tasks.train.loop import _read_rows as _rows

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


@dataclass
class Tuner:
    """One fine-tuning process: what :func:`setup` builds and every step reads."""

    t: dict  # the spec's hyper-parameters
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loader: StepLoader
    ckdir: Path
    task: str  # translate or classify
    held_out: Any = None  # a labelled set's eval rows (polars), saved beside its classifier for the evaluate stage
    bf16: bool = False  # trained under bf16 autocast (tasks/common/precision.py)


def run(spec: dict) -> dict:
    """Fine-tune (or resume) to ``max_steps``, then save the model folder to ``final``; returns the summary."""
    import torch

    tu = setup(spec)
    t, metrics = tu.t, tu.ckdir / METRICS
    last = latest_checkpoint(tu.ckdir, spec["fingerprint"])
    if last is not None:
        load_checkpoint(tu.accelerator, last, tu.scheduler, tu.loader)
        print(f"{RESUMED} {last.name} at step {tu.loader.step}", flush=True)
    main, rank, world = tu.accelerator.is_main_process, tu.accelerator.process_index, tu.accelerator.num_processes
    if main:
        kept = [r for r in _rows(metrics) if r["step"] <= tu.loader.step]
        metrics.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        counts = ", ".join(f"{k}: {v}" for k, v in tu.loader.examples.counts.items())
        steps = f"steps {tu.loader.step} -> {t['max_steps']}, {world} process(es)"
        print(f"fine-tuning ({spec['task']}; examples {counts}), {steps}", flush=True)
    began = window_start = time.perf_counter()
    tokens = 0
    for step in range(tu.loader.step, t["max_steps"]):
        # every process draws the step's whole batch (a function of seed and step) and takes its own rows of it
        share = {k: v[rank::world] for k, v in tu.loader.next_batch().items()}
        batch = {k: torch.from_numpy(v).to(tu.accelerator.device) for k, v in share.items()}
        tokens += batch["input_ids"].numel() * world
        row = train_step(tu, batch, step + 1)
        if row and main:
            with metrics.open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            now = time.perf_counter()
            speed = tokens / max(now - window_start, 1e-9)
            window_start, tokens = now, 0
            print(PROGRESS + json.dumps(row | {"max_steps": t["max_steps"], "tokens_per_s": speed}), flush=True)
        if (step + 1) % t["checkpoint_every"] == 0 and step + 1 < t["max_steps"]:
            state = {"fingerprint": spec["fingerprint"], "scheduler": tu.scheduler.state_dict()}
            save_checkpoint(
                tu.accelerator, tu.ckdir, step + 1, t["keep_checkpoints"], state | {"loader": tu.loader.state_dict()}
            )
    return finish(tu, Path(spec["final"]), time.perf_counter() - began)


def setup(spec: dict) -> Tuner:
    """The pretrained model, AdamW, the schedule and the examples; a configuration that cannot fine-tune (no usable
    pairs, a model folder that will not load) prints :data:`CONFIG_ERROR` and exits with :data:`CONFIG_EXIT`."""
    import torch
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from xlmflow.tasks.common.model import register

    t = spec["train"]
    gpu = torch.cuda.is_available()
    bf16 = use_bf16(t.get("precision", "auto"), gpu)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not gpu)
    set_seed(t["seed"])
    register()
    transformers.utils.logging.disable_progress_bar()
    try:
        model, examples = classifier(spec) if spec["task"] == "classify" else translator(spec)
        held = _held_out(spec) if t.get("labelled") else None
    except (ValueError, KeyError, OSError) as e:
        print(f"{CONFIG_ERROR}{type(e).__name__}: {' '.join(str(e).split())}", flush=True)
        sys.exit(CONFIG_EXIT)
    suit(model, bf16, gpu).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"], betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t["warmup_steps"], t["max_steps"], "cosine", t["min_lr_ratio"])
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    ckdir = Path(spec["checkpoints"])
    ckdir.mkdir(parents=True, exist_ok=True)
    loader = StepLoader(examples, t["seed"], t["batch_size"])
    return Tuner(t, accelerator, model, optimizer, scheduler, loader, ckdir, spec["task"], held, bf16)


def translator(spec: dict):
    """The pretrained language model and the translation examples."""
    import transformers

    t = spec["train"]
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], use_safetensors=True)
    files = [Shard(**f) for f in spec["pairs"]]
    cfg = model.config
    return model, TranslationExamples(files, t["directions"], cfg.langs, cfg.pad_token_id, t["max_len"])


def _held_out(spec: dict):
    """A labelled set's eval rows (every language): the rows its classifier is tested on, never trained on."""
    from xlmflow.storage import Location
    from xlmflow.tasks.common import labelled_sets

    return labelled_sets.eval_rows(labelled_sets.read_labelled(Location(spec["set"])))


def classifier(spec: dict):
    """A sequence classifier built on the pretrained model (its head new), and the labelled examples: the rows of the
    set's ``lang`` side whose class has ``min_rows`` rows or more."""
    import transformers
    from tokenizers import Tokenizer

    from xlmflow.storage import Location
    from xlmflow.tasks.common import labelled_sets
    from xlmflow.tasks.common.parallel_sets import labelled_rows, read_set

    t = spec["train"]
    if t.get("labelled"):
        rows = labelled_sets.train_rows(labelled_sets.read_labelled(Location(spec["set"])), t["lang"], t["min_rows"])
    else:
        rows = labelled_rows(read_set(Location(spec["set"])), t["lang"], t["min_rows"])
    config = transformers.AutoConfig.from_pretrained(spec["model"])
    tok = Tokenizer.from_file(spec["tokenizer"])
    examples = LabelledExamples.encode(
        tok, rows["text"].to_list(), rows["class"].to_list(), t["lang"], config.langs, t["max_len"]
    )
    labels = dict(enumerate(examples.classes))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        spec["model"],
        use_safetensors=True,
        num_labels=len(labels),
        id2label=labels,
        label2id={c: i for i, c in labels.items()},
    )
    return model, examples


def classify_loss(accelerator, model, batch: dict) -> tuple:
    """(sum of the rows' cross-entropy, rows) of one batch, after its backward pass."""
    loss = model(input_ids=batch["input_ids"], lang_ids=batch["lang_ids"], labels=batch["labels"]).loss
    accelerator.backward(loss)
    n = len(batch["labels"])
    return loss.detach() * n, n


def train_step(tu: Tuner, batch: dict, done: int) -> dict | None:
    """One optimiser step on ``batch``; its metrics row when step ``done`` logs (else None)."""
    if tu.task == "classify":  # a mean over this process's rows; the processes' gradients are averaged
        loss_sum, total = classify_loss(tu.accelerator, tu.model, batch)
        total *= tu.accelerator.num_processes
    else:  # over the targets of every process (accumulate's normalisation)
        loss_sum, total = accumulate(tu.accelerator, tu.model, [batch])
    grad_norm = tu.accelerator.clip_grad_norm_(tu.model.parameters(), tu.t["grad_clip"])
    lr = tu.scheduler.get_last_lr()[0]
    tu.optimizer.step()
    tu.scheduler.step()
    tu.optimizer.zero_grad(set_to_none=True)
    if done % tu.t["log_every"] and done not in (1, tu.t["max_steps"]):
        return None
    loss_sum = tu.accelerator.reduce(loss_sum, "sum")  # every process reaches it: the same steps log
    return {"step": done, "loss": float(loss_sum / total), "lr": lr, "grad_norm": float(grad_norm)}


def finish(tu: Tuner, final: Path, seconds: float) -> dict:
    """Save the model folder (written aside, renamed to ``final``; the main process, once every process is done):
    weights, config, the model's code, the metrics and the summary; for translation a generation config that stops
    at EOS and pads with PAD."""
    from xlmflow.tasks.common.model import save_with_code

    tu.accelerator.wait_for_everyone()
    if not tu.accelerator.is_main_process:  # one process saves
        return {}
    rows = _rows(tu.ckdir / METRICS)
    summary = {
        "steps": tu.t["max_steps"],
        "examples": tu.loader.examples.counts,
        "loss_first": rows[0]["loss"],
        "loss_last": rows[-1]["loss"],
        "precision": "bf16" if tu.bf16 else "fp32",
    } | ({"lang": tu.t["lang"]} if tu.task == "classify" else {})
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain = tu.accelerator.unwrap_model(tu.model)
    if tu.task == "translate":
        plain.generation_config.eos_token_id = plain.config.eos_token_id
        plain.generation_config.pad_token_id = plain.config.pad_token_id
    save_with_code(plain, tmp)
    if tu.held_out is not None:
        tu.held_out.write_parquet(tmp / EVAL_ROWS)
    shutil.copyfile(tu.ckdir / METRICS, tmp / METRICS)
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    print(PROGRESS + json.dumps({"step": tu.t["max_steps"], "max_steps": tu.t["max_steps"], "done": True}), flush=True)
    return summary | {"seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m xlmflow.tasks.finetune.loop SPEC.json", file=sys.stderr)
        return 2
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
