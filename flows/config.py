"""Pipeline configuration: one section per stage, from a TOML file, CLI flags or defaults.

The defaults run the bundled demo corpus (``data/demo``), so ``xlmflow run`` needs no
arguments. A TOML file has one table per stage, e.g.::

    [ingest]
    bad_records = "fail"
    [[ingest.sources]]
    path = "s3://bucket/crawl/*.jsonl.zst"
    text_field = "content"
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field

from xlmflow import PACKAGE_ROOT
from xlmflow.tasks.ingest import IngestParams, Source

DEMO_CORPUS = PACKAGE_ROOT / "data" / "demo"


def demo_sources() -> list[Source]:
    return [Source(path=str(DEMO_CORPUS / "*.jsonl.zst"), format="jsonl", text_field="text", lang_field="lang")]


class PipelineConfig(BaseModel):
    ingest: IngestParams = Field(default_factory=lambda: IngestParams(sources=demo_sources()))

    @classmethod
    def load(cls, path: str | Path | None) -> "PipelineConfig":
        if path is None:
            return cls()
        with open(path, "rb") as f:
            return cls.model_validate(tomllib.load(f))
