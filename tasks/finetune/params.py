"""The finetune stage's parameters: translation fine-tuning of the pretrained model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xlmflow.tasks.common.parallel_sets import Paths
from xlmflow.tasks.common.precision import PRECISION_HELP, Precision
from xlmflow.tasks.finetune.data import Direction


class FinetuneParams(BaseModel):
    """Defaults for a model of GPT-2 small's size; the demo sets a shorter run (flows/demo.py)."""

    model_config = ConfigDict(extra="forbid")

    translate: bool = Field(True, description="fine-tune a translation model (finetune/translate)")
    directions: list[str] = Field(
        default_factory=list,
        description="translation directions as SRC-TGT (en-fr); empty: English to and from every other language "
        "of the model that the parallel sets' train parts pair with it",
    )
    max_steps: int = Field(1000, ge=1, description="optimiser steps")
    batch_size: int = Field(32, ge=1, description="examples per step")
    max_len: int | None = Field(
        None, ge=8, description="longest example (prompt + target tokens) kept; None: the model's context"
    )
    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(30, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate / peak (cosine decay)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    seed: int = Field(0, description="seed of the example draws")
    num_processes: int = Field(
        1,
        ge=1,
        description="processes (CPU: torchrun; GPUs: accelerate launch), each taking its share of every batch "
        "(batch_size must divide by it); the gradients are those of the whole batch",
    )
    precision: Precision = Field("auto", description=PRECISION_HELP)
    log_every: int = Field(10, ge=1, description="a loss line every N steps")
    checkpoint_every: int = Field(100, ge=1, description="a checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="the newest N checkpoints are kept while fine-tuning")
    classify: bool = Field(
        True,
        description="fine-tune a classifier per parallel set (finetune/classify-<set>) on one language's rows of its "
        "train part, labelled by the segment id (LibreOffice module, handbook chapter), for zero-shot transfer",
    )
    parallel: Paths = Field(
        default_factory=list,
        description="parallel sets (folders of NAME.train/NAME.eval.parquet or .tsv); the pipeline's",
    )
    labelled: Paths = Field(
        default_factory=list,
        description="labelled sets: Parquet/TSV tables with text, label and lang columns (and split: train or eval; "
        "without it a hash of the text holds out a fifth of the rows); a classifier each (finetune/classify-<name>), "
        "trained on classify_lang's train rows, tested by the evaluate stage on every language's eval rows",
    )
    classify_sets: list[str] = Field(
        default_factory=list, description="the sets (by name) to fine-tune classifiers on; empty: every set"
    )
    classify_lang: str = Field("en", description="the one language the classifier is trained on")
    classify_steps: int = Field(300, ge=1, description="optimiser steps of each classifier")
    classify_min_rows: int = Field(20, ge=1, description="a class needs this many train rows (rarer: left out)")

    @field_validator("directions")
    @classmethod
    def _directions(cls, value: list[str]) -> list[str]:
        for d in value:
            Direction.parse(d)
        return value

    @model_validator(mode="after")
    def _equal_shares(self) -> "FinetuneParams":
        if self.batch_size % self.num_processes:
            raise ValueError(
                f"finetune.batch_size {self.batch_size} does not divide among num_processes {self.num_processes}: "
                "each process takes an equal share of every batch"
            )
        return self
