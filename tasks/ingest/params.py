"""The ingest stage's parameters: its sources and how to read them, part size and the bad-record rule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from xlmflow.tasks.common.parallel_sets import check_lang_code

Format = Literal["auto", "text", "jsonl", "parquet", "hf-disk", "hf"]


class Source(BaseModel):
    """One input: a file, folder, glob or fsspec URL, or hf:NAME for a Hugging Face dataset."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    path: str = Field(
        description="a file, folder (read recursively), glob, fsspec URL (s3://, gs://, memory://) or hf:NAME"
    )
    format: Format = Field("auto", description="auto: by extension (txt, jsonl and compressed, parquet, hf-disk)")
    text_field: str = Field("text", description="jsonl, parquet, hf: the field or column holding the text")
    lang_field: str | None = Field("lang", description="the field or column holding a record's claimed language")
    lang: str | None = Field(None, description="claimed language for records that carry none")
    paragraphs: bool = Field(False, description="text files: one document per blank-line paragraph, not per line")
    split: str | None = Field(None, description="hf, hf-disk: the split to read (train, validation, ...)")
    config: str | None = Field(None, description="hf: the dataset's configuration (subset) name")
    revision: str | None = Field(
        None, description="hf: the dataset's commit, tag or branch; None = its current commit, resolved when planning"
    )

    @field_validator("lang")
    @classmethod
    def _lang_code(cls, v: str | None) -> str | None:
        """A claimed language is compared with detected labels: 'english' or 'EN' would never match one."""
        if v is not None and (problem := check_lang_code(v)):
            raise ValueError(problem)
        return v


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    sources: list[Source] = Field(default_factory=list, description="inputs to read; at least one")
    part_mb: int = Field(256, ge=1, description="roll over to a new Parquet part after this many MB of Arrow data")
    bad_records: Literal["quarantine", "fail"] = Field(
        "quarantine", description="a bad record: quarantine (set aside with its reason), or fail the file naming it"
    )
