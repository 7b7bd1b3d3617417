"""A training step of the demo's model in fp32 and bf16 on this CPU, with SDPA and with plain ("eager") attention:
the bare library calls (transformers' GPT-2, fused AdamW, clipping), seconds per step and the ratio to fp32 + SDPA
(transformers' default), side by side. It is what ``precision = "auto"`` rests on (tasks/common/precision.py):
bf16 pays on a CPU with bf16 matrix units (AMX, or AVX-512 bf16 as on AMD Zen 4), and only with eager attention there.

    python bench/bench_precision.py [--steps 40] [--threads N] [--layers 2] [--width 128] [--vocab 4030]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def seconds_per_step(bf16: bool, attention: str, a: argparse.Namespace) -> float:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=a.vocab, n_positions=a.context, n_embd=a.width, n_layer=a.layers, n_head=a.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel._from_config(config, attn_implementation=attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    ids = torch.randint(0, a.vocab, (a.batch, a.context))

    def step() -> None:
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up: allocator, kernels
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    return (time.perf_counter() - t0) / a.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4030, help="the demo's 4k vocabulary and its special tokens")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    amx, avx = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    print(f"torch {torch.__version__}, {a.threads} threads, AMX: {amx}, AVX-512 bf16: {avx}", end=", ")
    print(f"model {a.layers} x {a.width}, vocab {a.vocab}")
    base = None
    for bf16, attention in ((False, "sdpa"), (False, "eager"), (True, "sdpa"), (True, "eager")):
        s = seconds_per_step(bf16, attention, a)
        base = base or s
        name = f"{'bf16' if bf16 else 'fp32'} + {attention}"
        print(f"{name:13s} {s * 1000:7.1f} ms/step  {base / s:5.2f}x fp32 + sdpa")


if __name__ == "__main__":
    main()
