"""Pipeline configuration: one section per stage (from the registry), from a TOML file, CLI flags or the demo.

With no ``--config`` file and no ``--source``, ``xlmflow run`` runs the bundled demo:
its corpus (``data/demo``) and its parallel sets (``data/parallel``). A user's file
starts from the plain defaults, so nothing of the demo leaks into a user's run. A TOML
file has an optional top-level ``parallel`` (the user's evaluation sets: held out of
the corpus, used for alignment pairs and evaluation) and one table per stage, e.g.::

    parallel = "/data/my-parallel-sets"
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

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, create_model

from xlmflow.flows.demo import DEMO
from xlmflow.flows.registry import STAGES
from xlmflow.tasks.parallel import Paths


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt section or option is an error, not ignored

    parallel: Paths = Field(
        default_factory=list,
        description="the evaluation parallel sets: folders of NAME.train.parquet / NAME.eval.parquet, or files "
        "(Parquet/TSV, one column per language); eval segments are held out of the corpus and evaluated, "
        "train ones feed alignment and the transfer probe",
    )

    def stage_params(self, name: str) -> BaseModel:
        """The section of stage ``name``, with the pipeline's parallel sets filled in where it leaves them unset."""
        params = getattr(self, name).model_copy(deep=True)
        stage = next(s for s in STAGES if s.name == name)
        if stage.parallel_field and not getattr(params, stage.parallel_field):
            setattr(params, stage.parallel_field, list(self.parallel))
        return params

    @classmethod
    def load(cls, path: str | Path | None) -> "PipelineConfig":
        """The file's configuration over the plain defaults; with no file, the demo's."""
        if path is None:
            return cls.demo()
        with open(path, "rb") as f:
            return cls.model_validate(tomllib.load(f))

    @classmethod
    def demo(cls) -> "PipelineConfig":
        """The bundled demo corpus and parallel sets (the only place they are named)."""
        return cls.model_validate(DEMO)


PipelineConfig = create_model(
    "PipelineConfig",
    __base__=_Config,
    __doc__="Every stage's parameters, one section per stage of the registry.",
    **{s.name: (s.params, Field(default_factory=s.params, description=s.help)) for s in STAGES},
)
