"""The vocab stage's parameters: vocabulary size, the sampling temperature, alignment evidence and the report."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from xlmflow.tasks.common.parallel_sets import Paths


class VocabParams(BaseModel):
    """Defaults: 16k ids (25 languages incl. zh/ja/ko). The bundled demo sets 4k (flows/demo.py): its tiny CPU model
    learns more per second with it."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    vocab_size: int = Field(16000, ge=300, description="ids in all: 256 bytes + specials + merges")
    alpha: float = Field(0.3, gt=0, le=1, description="sampling temperature exponent: 1 = natural mix, ->0 = uniform")
    seed: int = Field(0, description="seed of the language-mix sample the tokenizer is trained on")
    sample_chars: int | None = Field(
        None, ge=1, description="characters in the training sample; None = as many as the corpus"
    )
    min_frequency: int = Field(2, ge=1, description="a merge needs a pair seen this often")
    cjk_chunk: int = Field(
        4, ge=0, description="cut Han/kana runs into pieces of at most this many characters (0 = off)"
    )
    parallel: Paths = Field(
        default_factory=list,
        description="parallel sets (folders of NAME.train.parquet / NAME.eval.parquet, or eval files; one column "
        "per language): train parts teach translation pairs, eval parts measure premiums; empty = neither. "
        "The pipeline's parallel setting fills it",
    )
    dictionary: str | None = Field(
        None, description="TSV file of word translations (source, a tab, target per line) to add as alignment evidence"
    )
    align_min_df: int = Field(3, ge=1, description="a translation pair needs both tokens in this many train segments")
    align_min_dice: float = Field(0.3, ge=0, le=1, description="minimum Dice coefficient of a translation pair")
    report_docs: int = Field(
        2000, ge=1, description="documents per language (hash-sampled) measured for usage and the report"
    )
    batch_rows: int = Field(4096, ge=1, description="documents per batch while sampling and measuring (speed only)")

    def fingerprinted(self) -> dict[str, Any]:
        """Parameters that shape the bytes; input locations are covered by content hashes instead."""
        return self.model_dump(exclude={"parallel", "dictionary", "batch_rows"}) | {
            "dictionary": self.dictionary is not None
        }
