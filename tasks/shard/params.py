"""The shard stage's parameters: the validation split, shard and row-group sizes, the encode batch, the parallel
sets whose train parts become translation pairs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from xlmflow.tasks.common.parallel_sets import Paths


class ShardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    valid_fraction: float = Field(0.01, ge=0.0, le=0.5, description="share of each language's documents held out")
    min_valid_docs: int = Field(
        100,
        ge=0,
        description="at least this many validation documents per language (never more than half of a language)",
    )
    seed: int = Field(0, description="seeds the document-id hash that picks the split")
    shard_docs: int = Field(
        100_000, ge=1, description="documents per shard (the last shard of a language holds the rest)"
    )
    row_group_tokens: int = Field(1 << 20, ge=1, description="tokens per Parquet row group (~2 MB of uint16 ids)")
    batch_docs: int = Field(8192, ge=1, description="documents per encode_batch call")
    drop_removed: bool = Field(
        False,
        description="leave the documents of input files gone from the sources (an incremental run's langid ledger "
        "lists them) out of the shards: the shards that held some are written again without them, every other "
        "shard stays as it is; a model that already trained on them keeps what it learned (a full rebuild, "
        "--no-incremental, trains without them)",
    )
    parallel: Paths = Field(
        default_factory=list,
        description="parallel sets whose train parts are tokenised for training's translation-pair blocks (eval "
        "parts are never read); empty = none. The pipeline's parallel setting fills it",
    )
