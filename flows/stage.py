"""A stage as the rest of xlmflow sees it: one record, from which the CLI, the config, the
pipeline, ``status`` and the deployments are all derived (see :mod:`.registry`).

Adding a stage takes three edits: its module in ``tasks/`` (plain functions and their
``@task`` wrappers), its flow in ``flows/<name>.py`` ending with a :class:`Stage` record,
and one line in :data:`.registry.STAGES`.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from xlmflow.flows.demo import DEMO
from xlmflow.storage import RunDir
from xlmflow.storage.lock import run_lock


@dataclass(frozen=True)
class Stage:
    """One pipeline stage. Its ``name`` is its CLI command, config section, flow name,
    deployment name and run-directory folder: one name everywhere."""

    name: str
    flow: Any  # a prefect Flow taking (run_dir, params)
    params: type[BaseModel]
    help: str
    reads: tuple[str, ...] = ()  # stages whose committed output it reads
    flags: dict[str, str] = field(
        default_factory=dict
    )  # CLI option -> params field (type, choices, help from the field)
    extra_flags: Callable[[argparse._ArgumentGroup], None] | None = None  # options that are not one field each
    apply_extra: Callable[[argparse.Namespace, BaseModel], None] | None = None
    parallel_field: str | None = None  # the params field the pipeline's evaluation sets fill when unset
    report: Callable | None = None  # RunDir -> artifacts.Report: what the stage shows in the Prefect UI

    def demo(self) -> BaseModel:
        """The demo's section of this stage. A stage flow called without parameters (a deployment run as it
        is, a Python caller) runs it, as ``xlmflow <stage>`` with no --config or --source does."""
        params = self.params.model_validate(DEMO.get(self.name, {}))
        if self.parallel_field:
            setattr(params, self.parallel_field, list(DEMO["parallel"]))
        return params

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        for option, name in self.flags.items():
            add_field_flag(group, option, self.params, name)
        if self.extra_flags:
            self.extra_flags(group)

    def apply_flags(self, args: argparse.Namespace, params: BaseModel) -> None:
        """Lay the command-line options that were given over ``params`` (in place)."""
        given = vars(args)
        for option, name in self.flags.items():
            value = given.get(_dest(option))
            if value is not None:  # bool fields: --x / --no-x, None when not given
                setattr(params, name, value)
        if self.apply_extra:
            self.apply_extra(args, params)


def add_field_flag(group: argparse._ArgumentGroup, option: str, model: type[BaseModel], name: str) -> None:
    """An option for one params field: its type, choices and help come from the field."""
    info = model.model_fields[name]
    kind = _plain(info.annotation)
    default = info.default if info.default_factory is None else info.default_factory()
    text = (info.description or "") + f" (default {default})"
    if kind is bool:
        group.add_argument(option, dest=_dest(option), action=argparse.BooleanOptionalAction, default=None, help=text)
    elif typing.get_origin(kind) is typing.Literal:
        group.add_argument(option, dest=_dest(option), choices=list(typing.get_args(kind)), help=text)
    else:
        group.add_argument(option, dest=_dest(option), type=kind, help=text)


def _plain(annotation):
    """``int | None`` -> int; other annotations as they are."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def holds_run_lock(fn):
    """A flow body that holds its run directory's lock (:mod:`xlmflow.storage.lock`): one run at a time per
    run directory, whoever starts it (CLI, deployment, Python). Re-entrant, so the pipeline and the stage
    flows it runs share one lock; a second run fails at once naming the holder (``--wait``: the CLI waits)."""

    @functools.wraps(fn)
    def body(run_dir: str, *args, **kwargs):
        with run_lock(RunDir.of(run_dir).root):
            return fn(run_dir, *args, **kwargs)

    # Prefect validates parameters from the signature, resolving string annotations in the wrapper's module:
    # hand it the resolved ones
    body.__signature__ = inspect.signature(fn, eval_str=True)
    body.__annotations__ = typing.get_type_hints(fn)
    return body


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
