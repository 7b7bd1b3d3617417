"""The langid stage's parameters: the model, thresholds, kept languages, mismatch handling, quality and dedup."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from xlmflow.tasks.common.parallel_sets import Paths, check_lang_code
from xlmflow.tasks.langid.dedup import DedupParams
from xlmflow.tasks.langid.quality import QualityParams


def _probability(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError("a probability, between 0 and 1")
    return value


Probability = Annotated[float, AfterValidator(_probability)]


class LangidParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    model_path: str | None = Field(None, description="fastText LID model (.ftz/.bin); default: bundled lid.176.ftz")
    top_k: int = Field(3, ge=1, description="labels and probabilities stored per document")
    lid_max_chars: int = Field(4096, ge=1, description="LID reads this prefix of each document")
    threshold: Probability = Field(0.5, description="least top-1 probability to accept a label")
    thresholds: dict[str, Probability] = Field(
        default_factory=lambda: {"hr": 0.25, "bs": 0.25, "sr": 0.25, "sh": 0.25},
        description="per-language overrides; Croatian/Bosnian/Serbian split their mass, so FineWeb-2-style lower bars",
    )
    keep_langs: list[str] | None = Field(None, description="languages to keep (ISO codes); None keeps all")
    mismatch: Literal["relabel", "drop"] = Field("relabel", description="claimed != detected: relabel, or drop")
    fix_zh_ja: bool = Field(True, description="a `ja` label on text without kana becomes `zh`")
    min_lang_docs: int = Field(100, ge=0, description="languages with fewer clean documents are dropped")
    holdout: Paths = Field(
        default_factory=list,
        description="parallel sets (folders of NAME.eval.parquet, or files) whose eval segments are held out: "
        "documents repeating one are rejected (eval_holdout); empty = off. The pipeline's parallel setting fills it",
    )
    holdout_ngram: int = Field(
        11,
        ge=0,
        description="documents sharing this many consecutive text units (~ BPE tokens: word pieces of up to 2 "
        "capitals or 4 other letters, punctuation marks, CJK characters) with a held-out eval segment are rejected "
        "(eval_overlap); 0 = exact copies only. Why 11: tasks/langid/overlap.py",
    )
    quality: QualityParams = Field(
        default_factory=QualityParams,
        title="Quality",
        description="quality heuristics: thresholds on the stored signals (changing one never reruns the LID model)",
    )
    dedup: DedupParams = Field(
        default_factory=DedupParams,
        title="Dedup",
        description="exact and near-duplicate removal per detected language, keeping the smallest doc_id of a cluster",
    )

    @field_validator("keep_langs", "thresholds")
    @classmethod
    def _codes(cls, value):
        """A code no LID label can equal ('english', 'xx') would silently keep or drop nothing."""
        for code in sorted(value or []):
            if problem := check_lang_code(code):
                raise ValueError(problem)
        return value
