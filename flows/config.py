"""Pipeline configuration: one section per stage, from a TOML file, CLI flags or defaults.

The defaults run the bundled demo corpus (``data/demo``), so ``xlmflow run`` needs no
arguments. A TOML file has one table per stage, e.g.::

    [ingest]
    bad_records = "fail"
    [[ingest.sources]]
    path = "s3://bucket/crawl/*.jsonl.zst"
    text_field = "content"
    [langid]
    threshold = 0.6
    keep_langs = ["en", "fr", "de"]
    [vocab]
    vocab_size = 32000
    [shard]
    valid_fraction = 0.02
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from xlmflow import PACKAGE_ROOT
from xlmflow.tasks.ingest import IngestParams, Source
from xlmflow.tasks.langid import LangidParams
from xlmflow.tasks.shard import ShardParams
from xlmflow.tasks.vocab import VocabParams

DEMO_CORPUS = PACKAGE_ROOT / "data" / "demo"


def demo_ingest() -> IngestParams:
    return IngestParams(sources=[Source(path=str(DEMO_CORPUS / "*.jsonl.zst"), format="jsonl", text_field="text",
                                        lang_field="lang")])


def task_runner(dask: str | None = None):
    """Units run on threads (the work is in Arrow/polars/fastText/tokenizers, which release the GIL),
    bounded by ``XLMFLOW_WORKERS`` (default: CPU count) so memory stays bounded too. With ``dask``
    (a scheduler address, or ``local``) they run on a Dask cluster through prefect-dask instead."""
    if not dask:
        return ThreadPoolTaskRunner(max_workers=int(os.environ.get("XLMFLOW_WORKERS", os.cpu_count() or 2)))
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:
        raise ImportError("running on Dask needs prefect-dask: pip install -e '.[dask]'") from e
    return DaskTaskRunner() if dask == "local" else DaskTaskRunner(address=dask)


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ingest: IngestParams = Field(default_factory=demo_ingest)
    langid: LangidParams = Field(default_factory=LangidParams)
    vocab: VocabParams = Field(default_factory=VocabParams)
    shard: ShardParams = Field(default_factory=ShardParams)

    @classmethod
    def load(cls, path: str | Path | None) -> "PipelineConfig":
        if path is None:
            return cls()
        with open(path, "rb") as f:
            return cls.model_validate(tomllib.load(f))
