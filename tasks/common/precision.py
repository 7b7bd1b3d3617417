"""Mixed precision for the training processes (pretraining and fine-tuning): when bf16 pays, and what it needs.

On a CPU with AMX units (Intel Xeon since Sapphire Rapids) a step of the demo's 2 x 128 model is 1.71x faster in
bf16 with plain matrix-product attention (``eager``), but only 1.28x with PyTorch's CPU flash attention (SDPA), whose
bf16 backward pass is slow (``python bench/bench_precision.py``); in the training loop 0.111 s a step against 0.140 s
at equal loss (bench/RESULTS.md, "bf16 on a CPU with AMX units"). AMD's Zen 4 has no AMX but AVX-512 bf16
instructions, which oneDNN's bf16 matrix products use: there the same step is 2.29x faster in bf16 + eager (44.4 ms
against 101.7 ms, the same bench). A CPU with neither emulates bf16, slowly, so ``auto`` keeps fp32 there.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["auto", "fp32", "bf16"]
PRECISION_HELP = "auto: bf16 on a GPU that has it and on a CPU with AMX or AVX-512 bf16 units, else fp32"


def use_bf16(precision: str, gpu: bool) -> bool:
    """Whether this process trains in bf16 (autocast; the weights and optimiser stay fp32)."""
    import torch

    if precision != "auto":
        return precision == "bf16"
    if gpu:
        return torch.cuda.is_bf16_supported()
    # private in torch 2.x: a check that is absent means "not known", fp32
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(check and check()) for check in checks)


def suit(model, bf16: bool, gpu: bool):
    """``model`` set up for the precision it trains in: eager attention for bf16 on a CPU."""
    if bf16 and not gpu:
        model.set_attn_implementation("eager")
    return model
