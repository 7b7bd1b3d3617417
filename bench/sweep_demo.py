"""Which demo training learns most in the demo's CPU budget: train each point of a sweep on a run's shards and
measure mean valid bits per byte beside a per-language unigram model, with the wall time it took.

Each point is the demo's training (``TrainParams()``) with a few fields changed (``POINTS``), planned by the train
stage on ``--run-dir`` (its committed vocab and shard stages: command A's ``runs/demo``) and run in this process by
the training loop (``train_loop.run``: no subprocess, the same loop the stage launches), checkpoints and model in a
temporary folder. Per language, on the same validation blocks the loop evaluates (the first ``eval_blocks`` blocks of
the valid split): the model's loss at the end and a unigram model's (token counts of the language's train shards,
add-one smoothed), both in nats per token, and in bits per byte (tokens / UTF-8 bytes of those blocks, tags left
out). The baseline is the one the evaluate stage reports ("beats unigram"), on the loop's blocks rather than its
half-context windows, so the two figures are close but not equal.

    python bench/sweep_demo.py --run-dir runs/demo [--points today lr4e-3 ...] [--out bench/sweep_demo.json]
        [--generations]

Prints one row per point and writes them all to ``--out`` (appending to a file that exists: points run in several
calls land in one table; a row is keyed by its point and the run's vocabulary size, so the same points on run
directories built with ``--vocab-size 8000`` or ``4000`` sit beside those of the demo's 16,000).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import tempfile
import time

import numpy as np

from xlmflow.storage import RunDir
from xlmflow.tasks import train
from xlmflow.tasks.evaluate.units import train_unigram
from xlmflow.tasks.train import loop as train_loop
from xlmflow.tasks.train.data import IGNORE, valid_blocks

#: the sweep: the demo's training with these changes. Until 16466ae the demo was 4 x 128, context 128, batch 16,
#: lr 2e-3, 300 steps (the rows before "2x128-400-lr4e-3" change that); since, 2 x 128, lr 4e-3, 350 steps ("today").
POINTS: dict[str, dict] = {
    "today": {},
    "1x128-500": {"model": {"n_layer": 1}, "max_steps": 500},
    "2x128-ctx64-b32": {"model": {"n_positions": 64}, "batch_size": 32},
    "2x128-450": {"max_steps": 450},
    # a smaller vocabulary makes a step cheaper (the 16k x 128 output layer is most of it): more steps, same time
    "2x128-1000": {"max_steps": 1000, "warmup_steps": 60},
    "2x128-1200": {"max_steps": 1200, "warmup_steps": 80},
    "no-pairs": {"parallel_share": 0.0},
    "lr4e-3": {"lr": 4e-3},
    "lr6e-3": {"lr": 6e-3, "warmup_steps": 50},
    "ctx64-b32": {"model": {"n_positions": 64}, "batch_size": 32},
    "b8-600": {"batch_size": 8, "max_steps": 600, "warmup_steps": 60},
    "b4-1200": {"batch_size": 4, "max_steps": 1200, "warmup_steps": 100},
    "b4-1200-lr3e-3": {"batch_size": 4, "max_steps": 1200, "warmup_steps": 100, "lr": 3e-3},
    "2x128-b8-700": {"model": {"n_layer": 2}, "batch_size": 8, "max_steps": 700, "warmup_steps": 60, "lr": 4e-3},
    "2x128-600": {"model": {"n_layer": 2}, "max_steps": 600, "lr": 4e-3},
    "2x128-400-lr4e-3": {"model": {"n_layer": 2}, "max_steps": 400, "lr": 4e-3},
    "4x96-450": {"model": {"n_embd": 96, "n_head": 4}, "max_steps": 450, "lr": 4e-3},
    "4x128-450-lr4e-3": {"max_steps": 450, "lr": 4e-3},
    # bf16 on the CPU's AMX units (since 004a3a8): "today" is 2 x 128, 1,200 steps; wider or deeper at its wall time
    "3x128-1000": {"model": {"n_layer": 3}, "max_steps": 1000},
    "2x192-900": {"model": {"n_embd": 192}, "max_steps": 900},
    "lr6e-3-1200": {"lr": 6e-3},
    # more steps, where bf16 makes them cheap (AVX-512 bf16 on AMD Zen 4: 2.29x a fp32 step)
    "1800": {"max_steps": 1800, "warmup_steps": 120},
    "2400": {"max_steps": 2400, "warmup_steps": 160},
    "1500": {"max_steps": 1500, "warmup_steps": 100},
    # another seed (initialisation and data order): how much of a point's figures is chance
    "seed1": {"seed": 1},
    "1800-seed1": {"max_steps": 1800, "warmup_steps": 120, "seed": 1},
    "1500-seed1": {"max_steps": 1500, "warmup_steps": 100, "seed": 1},
}


def measure(spec: dict, model_dir: str, unigram: dict[str, np.ndarray]) -> dict:
    """Per language: the model's and the unigram's nats per token and bits per byte on the loop's valid blocks."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    import xlmflow  # noqa: F401  (registers the model class)

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = Tokenizer.from_file(os.path.join(spec["vocab"], "tokenizer.json"))
    t, out = spec["train"], {}
    tag_ids = dict(zip(spec["langs"], model.config.lang_token_ids))
    for i, lang in enumerate(spec["langs"]):
        b = valid_blocks(spec["shards"], lang, t["block_size"], t["eval_blocks"], tag_ids, i + 1)
        ids, labels = torch.from_numpy(b["input_ids"]), torch.from_numpy(b["labels"])
        with torch.no_grad():
            logits = model(input_ids=ids, lang_ids=torch.from_numpy(b["lang_ids"])).logits[:, :-1]
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
        scored = target[target != IGNORE].numpy()
        counts = unigram[lang].astype(np.float64) + 1.0
        uni = float(-np.log(counts[scored] / counts.sum()).mean())
        text_bytes = len(tok.decode(scored.tolist(), skip_special_tokens=True).encode("utf-8"))
        per_byte = len(scored) / max(text_bytes, 1) / math.log(2)
        out[lang] = {
            "nats": float(nll),
            "unigram_nats": uni,
            "bpb": float(nll) * per_byte,
            "unigram_bpb": uni * per_byte,
        }
    return out


CORE = ("en", "fr", "de", "es", "zh", "ru", "ar")  # the 7 core languages: the floor's generations


def generations(run: RunDir, spec: dict, model_dir: str) -> dict:
    """The evaluate stage's generation measure (its prompts, greedy and sampled, its defaults) on the core languages:
    per language the greedy texts that are degenerate (no letter, or distinct-2 < 0.5) and their mean distinct-2."""
    import transformers
    from tokenizers import Tokenizer

    from xlmflow.tasks.evaluate import measures, scores
    from xlmflow.tasks.evaluate.params import EvalParams
    from xlmflow.tasks.evaluate.units import _generation, lid_model_path, valid_docs
    from xlmflow.tasks.langid import lid

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = Tokenizer.from_file(os.path.join(spec["vocab"], "tokenizer.json"))
    p = EvalParams().model_dump()
    lid_model, out = lid.load_model(lid_model_path(run)), {}
    for lang in CORE:
        i = spec["langs"].index(lang)
        plain = measures.doc_texts(tok, valid_docs(run.stage("shard").uri, lang, p["max_docs"]))
        docs = measures.encode_docs(tok, plain, model.config.lang_token_ids[i], model.config.eos_token_id)
        _, texts = _generation(model, tok, lid_model, docs, lang, p)
        greedy = [t["greedy"] for t in texts]
        out[lang] = {
            "greedy_degenerate": int(scores.degenerate(greedy).sum()),
            "greedy_distinct_2": round(float(np.mean(scores.distinct_2s(greedy))), 3),
            "prompts": len(greedy),
            "first": {"prompt": texts[0]["prompt"], "greedy": texts[0]["greedy"]},
        }
    return out


def run_point(run: RunDir, name: str, change: dict, work: str, with_generations: bool = False) -> dict:
    base = train.TrainParams()
    model = {**base.model, **change.get("model", {})}
    params = base.model_copy(update={**{k: v for k, v in change.items() if k != "model"}, "model": model})
    unit = train.plan(run, train.TrainParams.model_validate(params.model_dump()))
    spec = train.spec_of(unit) | {"checkpoints": os.path.join(work, name), "final": os.path.join(work, name, "final")}
    spec["train"] = spec["train"] | {"checkpoint_every": 10**9}
    t0 = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        train_loop.run(spec)
    wall = time.monotonic() - t0
    shards, vocab_size = run.stage("shard").uri, _vocab_size(spec)
    unigram = {lang: train_unigram(shards, unit.input("shard").fingerprint, lang, vocab_size) for lang in spec["langs"]}
    per_lang = measure(spec, spec["final"], unigram)
    t = spec["train"]
    gen = {"generations": generations(run, spec, spec["final"])} if with_generations else {}
    return gen | {
        "point": name,
        "vocab_size": vocab_size,
        "change": change,
        "steps": t["max_steps"],
        "tokens": t["max_steps"] * t["batch_size"] * t["block_size"],
        "train_s": round(wall, 1),
        "mean_bpb": round(float(np.mean([v["bpb"] for v in per_lang.values()])), 3),
        "mean_unigram_bpb": round(float(np.mean([v["unigram_bpb"] for v in per_lang.values()])), 3),
        "below_unigram": sum(v["nats"] < v["unigram_nats"] for v in per_lang.values()),
        "languages": len(per_lang),
        "per_language": per_lang,
    }


def _vocab_size(spec: dict) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(spec["vocab"], "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--points", nargs="*", default=list(POINTS))
    ap.add_argument("--out", default="bench/sweep_demo.json")
    ap.add_argument("--generations", action="store_true", help="also the core languages' greedy generations")
    a = ap.parse_args()
    run = RunDir.of(a.run_dir)
    rows = json.loads(open(a.out).read()) if os.path.exists(a.out) else []
    with tempfile.TemporaryDirectory() as work:
        for name in a.points:
            row = run_point(run, name, POINTS[name], work, a.generations)
            key = (name, row["vocab_size"])
            rows = [r for r in rows if (r["point"], r.get("vocab_size", 16000)) != key] + [row]
            print(
                f"{name:>18}  vocab {row['vocab_size']:>5}  {row['steps']:>4} steps  {row['train_s']:>6.1f} s  "
                f"bpb {row['mean_bpb']:.3f} "
                f"(unigram {row['mean_unigram_bpb']:.3f})  below unigram in {row['below_unigram']}/{row['languages']}",
                flush=True,
            )
            for lang, g in row.get("generations", {}).items():
                print(
                    f"{'':>20}{lang}: greedy degenerate {g['greedy_degenerate']}/{g['prompts']}, "
                    f"distinct-2 {g['greedy_distinct_2']:.2f}: {g['first']['greedy'][:60]!r}"
                )
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
