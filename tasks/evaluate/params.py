"""The evaluate stage's parameters: the models and parallel sets to evaluate, and each measure's sizes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from xlmflow.tasks.common.parallel_sets import Paths


class EvalParams(BaseModel):
    """Sizes are small enough for the demo on a CPU; raise them for a GPU."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        default_factory=list,
        description="model folders or run directories to evaluate side by side; empty = this run's train stage",
    )
    parallel: Paths = Field(
        default_factory=list, description="parallel sets to evaluate; the pipeline's parallel setting fills it"
    )
    max_docs: int = Field(200, ge=1, description="valid documents per language for bits per byte")
    max_segments: int = Field(500, ge=2, description="rows of each parallel set used for retrieval")
    probe_rows: int = Field(2000, ge=2, description="English train rows fitting the transfer probe")
    probe_min_class_rows: int = Field(20, ge=1, description="probe classes need this many train rows (rarer: left out)")
    prompts: int = Field(
        20, ge=1, description="generation prompts per language (each continued greedily and sampled: n = 2 x prompts)"
    )
    prompt_tokens: int = Field(12, ge=2, description="tokens of a valid document used as a prompt")
    gen_tokens: int = Field(32, ge=1, description="tokens generated per prompt")
    translate_segments: int = Field(
        100, ge=1, description="segments translated per language pair (all usable ones where a set has fewer)"
    )
    translate_shots: int = Field(2, ge=0, description="examples in the translation prompt")
    ngram: int = Field(13, ge=4, description="contamination: text units (~ 16k-vocabulary tokens) in a shared n-gram")
    seed: int = Field(0, description="seeds sampled generation (per language) and the bootstrap resampling")
    batch_size: int = Field(32, ge=1, description="texts per forward pass (speed only)")
