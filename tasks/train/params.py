"""The train stage's parameters: model presets, each with its own training defaults, and the checks of a
model configuration that run before any training process starts.

A field the configuration leaves unset (None) takes its preset's value (:data:`TRAINING`): ``gpt2-small``
trains as GPT-2 / nanoGPT do (lr 6e-4, ~0.5M tokens per step, warm-up, one pass over the corpus), ``demo``
as the CPU demo always has. "Unset" is None rather than pydantic's ``model_fields_set``, because a
configuration is dumped and validated again on its way (the CLI re-validates after laying its flags over
the file, a deployment stores its parameters as JSON), which would mark every field as set.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from xlmflow.tasks.common.precision import PRECISION_HELP, Precision

PRESETS: dict[str, dict[str, Any]] = {
    # CPU: ~0.9M parameters with the demo's 4k vocabulary, a few minutes on 2 cores. Two layers, not four, and a 4k
    # vocabulary, not 16k: at this budget both learn more per CPU-second, the vocabulary most (the 16k x 128 output
    # layer was most of a step: 4k makes a step ~3x cheaper; bench/sweep_demo.py, bench/RESULTS.md)
    "demo": {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 128},
    # GPT-2 small, 124M with a 50k vocabulary (fewer with a smaller one), for a GPU
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
}
SIZES = {
    "demo": "~0.9M parameters with the demo's 4k vocabulary, for a CPU",
    "gpt2-small": "GPT-2 small, 124M parameters with a 50k vocabulary, for a GPU",
}
DROPOUT_OFF = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # pretraining on fresh tokens: no dropout

#: each preset's value of every field left unset. ``step_tokens``: grad_accum is chosen so that a step holds about
#: that many tokens over all processes; ``epochs``: max_steps is that many passes over the train tokens;
#: ``warmup_fraction``: a warm-up left unset is at most that share of the steps
TRAINING: dict[str, dict[str, Any]] = {
    "demo": {
        "batch_size": 16,
        "lr": 4e-3,
        "min_lr_ratio": 0.1,
        "warmup_steps": 100,
        "warmup_fraction": 0.1,  # a shorter run (--max-steps 50) warms up for a tenth of its steps, not past its end
        "max_steps": 1500,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "grad_accum": 1,
        "eval_every": 200,
        "checkpoint_every": 200,
        "parallel_share": 0.2,
    },
    "gpt2-small": {  # GPT-2 / nanoGPT practice for the 124M model
        "batch_size": 16,
        "lr": 6e-4,
        "min_lr_ratio": 0.1,
        "warmup_steps": 700,
        "warmup_fraction": 0.1,
        "epochs": 1.0,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "step_tokens": 2**19,
        "eval_every": 250,
        "checkpoint_every": 500,
        "parallel_share": 0.2,
    },
}
#: the fields a preset fills when they are unset
PRESET_FIELDS = (
    "batch_size",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "max_steps",
    "weight_decay",
    "grad_clip",
    "grad_accum",
    "eval_every",
    "checkpoint_every",
    "parallel_share",
)
#: model keys the stage sets itself (from the tokenizer and the alignment table)
DERIVED = (
    *("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "lang_token_ids", "langs", "anchor_ids"),
    "use_lang_embeddings",  # from train.lang_embeddings
)
SHAPE = ("n_layer", "n_head", "n_embd", "n_positions")
#: GPT2Config's fields (transformers 5) but the ones the stage sets (:data:`DERIVED`), without importing it
#: (tests/test_train_config.py compares them with the installed transformers)
GPT2_KEYS = (
    *("transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype"),
    *("chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type"),
    *("n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function"),
    *("resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range"),
    *("summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout"),
    *("scale_attn_weights", "use_cache", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"),
    *("add_cross_attention", "tie_word_embeddings"),
)
GPT2_ALIASES = {  # GPT2Config.attribute_map
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


def describe_preset(name: str) -> str:
    """One preset as the help shows it: its size and its training defaults."""
    t = TRAINING[name]
    steps = (
        f"{t['max_steps']} steps"
        if "max_steps" in t
        else f"{t['epochs']:g} pass over the train tokens at ~{t['step_tokens'] / 1e6:.1f}M tokens per step"
    )
    warmup = f"warm-up {t['warmup_steps']}" + (
        f" (at most 1/{round(1 / t['warmup_fraction'])} of the steps)" if "warmup_fraction" in t else ""
    )
    return (
        f"{name} ({SIZES[name]}: lr {t['lr']:.0e}".replace("e-0", "e-")
        + f", {warmup}, {steps}, batch {t['batch_size']}, weight decay {t['weight_decay']}, "
        + f"grad clip {t['grad_clip']}, translation-pair blocks {t['parallel_share']:g} of all)"
    )


def _preset_default(what: str) -> str:
    return f"{what}; None: the preset's (see --preset)"


#: the fields that shape continued training only (incremental runs): not in a fresh training's key
CONTINUE = (
    "continue_epochs",
    "continue_min_steps",
    "continue_max_steps",
    "replay_share",
    "replay_new_language",
    "replay_max",
    "continue_lr_scale",
    "rewarm_fraction",
    "keep_versions",
)


class TrainParams(BaseModel):
    """The train stage's settings. Left unset, a field takes its preset's value: the demo preset trains on a CPU in
    a few minutes."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["demo", "gpt2-small"] = Field(
        "demo", description="model size and its training defaults: " + "; ".join(map(describe_preset, PRESETS))
    )
    model: dict[str, Any] = Field(default_factory=dict, description="GPT2Config fields over the preset's")
    lang_embeddings: bool = Field(
        True, description="add a learned language embedding to every position's input (XLM); False: plain GPT-2 inputs"
    )
    align: Literal["none", "init", "tie"] = Field(
        "init",
        description="aligned vocabulary: none; init (aligned tokens start from their anchor's row); "
        "tie (tokens aligned across languages share one input row: fichier/file, never The/the)",
    )
    max_steps: int | None = Field(None, ge=1, description=_preset_default("optimiser steps"))
    batch_size: int | None = Field(None, ge=1, description=_preset_default("blocks per micro-batch and process"))
    grad_accum: int | None = Field(None, ge=1, description=_preset_default("micro-batches per optimiser step"))
    block_size: int | None = Field(None, ge=8, description="tokens per block; None = the model's context")
    lr: float | None = Field(None, gt=0, description=_preset_default("peak learning rate"))
    min_lr_ratio: float | None = Field(None, ge=0, le=1, description=_preset_default("final learning rate / peak"))
    warmup_steps: int | None = Field(None, ge=0, description=_preset_default("linear warm-up steps"))
    schedule: Literal["cosine", "linear"] = Field(
        "cosine", description="learning-rate decay after the warm-up, from the peak to min_lr_ratio x peak"
    )
    weight_decay: float | None = Field(None, ge=0, description=_preset_default("AdamW weight decay"))
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay")
    grad_clip: float | None = Field(None, gt=0, description=_preset_default("gradient norm clip"))
    alpha: float | None = Field(None, gt=0, le=1, description="language mixture exponent; None = the vocab stage's")
    parallel_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description=_preset_default(
            "share of blocks packed from translation pairs (the parallel sets' train parts, both directions); "
            "0 = none, and none where the shard stage has no pairs"
        ),
    )
    parallel_schedule: Literal["constant", "late"] = Field(
        "constant", description="late: the pair share rises linearly to twice parallel_share at the last step"
    )
    seed: int = Field(0, description="seed of the weights' initialisation and of the order of the training blocks")
    precision: Precision = Field("auto", description=PRECISION_HELP)
    eval_every: int | None = Field(
        None, ge=1, description=_preset_default("per-language validation loss every N steps (and at the end)")
    )
    eval_blocks: int = Field(16, ge=1, description="validation blocks per language")
    num_processes: int = Field(1, ge=1, description="processes (CPU: torchrun; GPUs: accelerate launch)")
    log_every: int = Field(10, ge=1, description="a loss line (and the progress artifact) every N steps")
    checkpoint_every: int | None = Field(None, ge=1, description=_preset_default("a checkpoint every N steps"))
    keep_checkpoints: int = Field(2, ge=1, description="the newest N checkpoints are kept while training")
    launcher: Literal["auto", "python", "torchrun", "accelerate"] = Field(
        "auto", description="auto: python for one CPU process, torchrun for several, accelerate launch on GPUs"
    )
    accelerate_config: str | None = Field(None, description="an accelerate config file (multi-GPU, multi-node)")
    continue_epochs: float | None = Field(
        None,
        gt=0,
        description="incremental runs: passes over the new increments' train tokens when training continues (the "
        "replay share comes on top); None: the passes the model made over its earlier tokens, at most 1",
    )
    continue_min_steps: int = Field(
        50, ge=1, description="incremental runs: fewest steps of a continued training (at most max_steps)"
    )
    continue_max_steps: int | None = Field(
        None,
        ge=1,
        description="incremental runs: most steps of a continued training (a night's budget); None: a fifth of "
        "max_steps (the preset's)",
    )
    continue_lr_scale: float = Field(
        0.25,
        gt=0,
        le=1,
        description="incremental runs: a continued training re-warms to lr x this, then decays (a short "
        "continuation at the full peak forgets more than it learns: bench/RESULTS.md)",
    )
    replay_share: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="incremental runs: least share of blocks drawn from earlier increments' shards while training "
        "continues on new ones (5-10% when the new data is like the old, in every language)",
    )
    replay_new_language: float = Field(
        0.25, ge=0, lt=1, description="incremental runs: the least replay share when the new data brings a language"
    )
    replay_max: float = Field(
        0.75,
        ge=0,
        lt=1,
        description="incremental runs: the replay share rises to the old mixture's weight of the languages the new "
        "data does not cover, up to this",
    )
    rewarm_fraction: float = Field(
        0.1, gt=0, le=1, description="incremental runs: share of a continued training's steps spent re-warming the lr"
    )
    keep_versions: int = Field(5, ge=1, description="earlier models kept in versions/train (xlmflow rollback)")
    record_documents: bool = Field(
        False,
        description="each rank writes which documents it read (documents-rank-R.json, "
        "committed with the model), to check a distributed run's data split",
    )

    @field_validator("model")
    @classmethod
    def _model_keys_and_shape(cls, model: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        preset = info.data.get("preset")
        if preset is not None:  # else the preset itself is refused
            check_model({**PRESETS[preset], **DROPOUT_OFF, **model}, model)
        return model

    def model_fields_resolved(self) -> dict[str, Any]:
        return {**PRESETS[self.preset], **DROPOUT_OFF, **self.model}

    def training_resolved(self, train_tokens: int | None = None, block_size: int | None = None) -> dict[str, Any]:
        """:data:`PRESET_FIELDS` as the run uses them: each one set here, else the preset's. ``train_tokens`` (the
        shard stage's) sizes max_steps where the preset counts passes over the corpus (None leaves it None)."""
        preset = TRAINING[self.preset]
        out = {k: getattr(self, k) for k in PRESET_FIELDS}
        for k in PRESET_FIELDS:
            if out[k] is None and k in preset:
                out[k] = preset[k]
        block = block_size or self.block_size or self.model_fields_resolved()["n_positions"]
        if out["grad_accum"] is None:
            out["grad_accum"] = max(1, round(preset["step_tokens"] / (out["batch_size"] * block * self.num_processes)))
        if out["max_steps"] is None and train_tokens is not None:
            step_tokens = out["batch_size"] * block * out["grad_accum"] * self.num_processes
            out["max_steps"] = max(1, math.ceil(preset["epochs"] * train_tokens / step_tokens))
        if self.warmup_steps is None and "warmup_fraction" in preset and out["max_steps"] is not None:
            out["warmup_steps"] = min(out["warmup_steps"], int(out["max_steps"] * preset["warmup_fraction"]))
        return out


def check_model(model: dict[str, Any], overrides: dict[str, Any] | None = None) -> None:
    """Refuse a model configuration the training processes would fail on, as a one-line ValueError naming the
    keys: ``overrides`` (the configured ``model``) holding a key GPT2Config does not have (the close ones named)
    or one the stage sets itself, or a shape GPT-2 cannot have (``n_embd`` not divisible by ``n_head``).
    Nothing is imported (transformers takes seconds, and this runs at every planning): the keys are
    :data:`GPT2_KEYS`; :func:`build_config` checks the values' types where training starts."""
    for key in overrides or {}:
        if key in DERIVED:
            raise ValueError(
                f"{key!r} is set by the train stage (from the vocab stage's tokenizer and alignment); remove it"
            )
        if key in GPT2_ALIASES:
            raise ValueError(f"{key!r} is GPT2Config's alias of {GPT2_ALIASES[key]!r}; write that")
        if key not in GPT2_KEYS:
            close = difflib.get_close_matches(key, GPT2_KEYS, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown model key {key!r}{hint} (GPT2Config's keys: {', '.join(SHAPE)}, n_inner, "
                "activation_function, layer_norm_epsilon, initializer_range, ...)"
            )
    for key in SHAPE:
        value = model.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} = {value!r} must be a positive integer")
    n_embd, n_head = model["n_embd"], model["n_head"]
    if n_embd % n_head:
        heads = [h for h in range(1, min(n_embd, 64) + 1) if n_embd % h == 0]
        raise ValueError(
            f"n_embd = {n_embd} is not divisible by n_head = {n_head} (each attention head gets n_embd / "
            f"n_head dimensions); choose n_head among {', '.join(map(str, heads))}, or n_embd a multiple of {n_head}"
        )


def build_config(model: dict[str, Any]) -> None:
    """Build the GPT2Config of ``model`` (imports transformers): its own checks of the values (types) fail here,
    as a one-line ValueError, rather than in every training process."""
    from transformers import GPT2Config

    try:
        GPT2Config(**model)
    except Exception as e:  # huggingface_hub's StrictDataclassFieldValidationError is no ValueError
        raise ValueError("train.model: " + " ".join(str(e).split())) from e


def checked_already(model: dict[str, Any]) -> bool:
    """Whether :func:`check_model` has checked every value of ``model``: a preset's shape, its keys given as positive
    integers, dropout off. Anything else (another GPT2Config key) still needs :func:`build_config`'s type checks."""
    return all(model.get(k) == v for k, v in DROPOUT_OFF.items()) and set(model) <= {*SHAPE, *DROPOUT_OFF}
