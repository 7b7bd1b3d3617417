"""Pipeline configuration: one section per stage (from the registry), from a TOML file, CLI flags or the demo.

A run directory records the configuration it was run with (``<run>/xlmflow.toml``, see
:mod:`xlmflow.storage.record`), and every later command on it starts from that record: a ``--config``
file's tables and the flags are laid over it and recorded in turn. Only a run directory with no record,
run with no ``--config`` and no ``--source``, takes the bundled demo's settings: its corpus
(``data/demo``) and its parallel sets (``data/parallel``). A user's file starts from the plain
defaults, so nothing of the demo leaks into a user's run. A TOML
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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from xlmflow.flows.demo import DEMO
from xlmflow.flows.registry import BY_NAME, STAGES
from xlmflow.storage import RunDir, read_record, write_record
from xlmflow.tasks.common.parallel_sets import Paths


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt section or option is an error, not ignored

    parallel: Paths = Field(
        default_factory=list,
        description="the evaluation parallel sets: folders of NAME.train.parquet / NAME.eval.parquet, or files "
        "(Parquet/TSV, one column per language); eval segments are held out of the corpus and evaluated, "
        "train ones feed alignment and the transfer probe",
    )

    incremental: bool = Field(
        False,
        description="append, don't rebuild: new input files become an increment deduplicated against the kept "
        "documents, the vocabulary stays, new shards are added, training continues from the last model",
    )

    @classmethod
    def model_validate(cls, obj: Any, *args, **kwargs):
        """Validation whose error is one line naming the key and the value, and what to do (the CLI
        prints the first line of an error; pydantic's first line only counts the errors)."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as e:
            raise ValueError(f"config: {describe(e, cls)}\n{e}") from e  # first line for the CLI, then pydantic's

    def stage_params(self, name: str) -> BaseModel:
        """The section of stage ``name``, with the pipeline's parallel sets filled in where it leaves them unset."""
        return BY_NAME[name].with_sets(getattr(self, name), self.parallel)

    @classmethod
    def load(cls, path: str | Path | None) -> "PipelineConfig":
        """The file's configuration over the plain defaults; with no file, the demo's."""
        if path is None:
            return cls.demo()
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e}); fix the file") from e
        except OSError as e:
            raise ValueError(f"{path}: cannot read the config file ({e.strerror or e}); check the path") from e
        try:
            return cls.model_validate(data)
        except ValueError as e:
            raise ValueError(f"{path}: {str(e).removeprefix('config: ')}") from e

    @classmethod
    def demo(cls) -> "PipelineConfig":
        """The bundled demo corpus and parallel sets (the only place they are named)."""
        return cls.model_validate(DEMO)

    @classmethod
    def for_run(cls, run_dir: str, file: str | Path | None = None, user: bool = False) -> "PipelineConfig":
        """What a command on ``run_dir`` starts from: the run's recorded configuration with the ``file``'s
        tables laid over it; with no record, the file over the plain defaults, or the demo's settings when
        nothing says this is a user's run (no ``file``, not ``user``: no ``--source``)."""
        recorded = read_record(RunDir.of(run_dir))
        base = recorded if recorded is not None else ({} if file or user else DEMO)
        if file is None:
            return cls.model_validate(base)
        laid = cls.load(file).model_dump(mode="json", exclude_unset=True)
        try:
            return cls.model_validate(merged(base, laid))
        except ValueError as e:
            raise ValueError(f"{file}: {str(e).removeprefix('config: ')}") from e

    def record(self, run_dir: str) -> bool:
        """Record this configuration as the run's (atomically); False when it already was."""
        return write_record(RunDir.of(run_dir), self.model_dump(mode="json"))


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: tables merge key by key, any other value (a list, a number) replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def describe(e: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of a validation error as one line: the key (``langid.keep_langs[0]``), the value
    and what is wrong; an unknown key lists the keys its table has."""
    errors = e.errors()
    first = errors[0]
    loc = first["loc"]
    key = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        known = _keys(model, loc[:-1])
        return (
            f"unknown key {key!r}; check its spelling" + (f" (known here: {', '.join(known)})" if known else "") + more
        )
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    if not key:  # a check of the whole config (the langid codes): its message names the key
        return msg + more
    shown = "" if isinstance(value, (dict, list)) or value is None else f" = {value!r}"
    return f"{key}{shown}: {msg}{more}"


def _keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the table at ``loc`` (a path of field names and list indices), when a model."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())  # list[Source], Source | None
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return sorted(model.model_fields)


PipelineConfig = create_model(
    "PipelineConfig",
    __base__=_Config,
    __doc__="Every stage's parameters, one section per stage of the registry.",
    **{s.name: (s.params, Field(default_factory=s.params, title=s.name, description=s.help)) for s in STAGES},
)
