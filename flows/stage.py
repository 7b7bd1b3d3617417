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
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from xlmflow.flows.demo import DEMO
from xlmflow.storage import RunDir, read_manifest, read_record, write_record
from xlmflow.storage.lock import run_lock
from xlmflow.tasks.common import progress


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
    check: Callable[[RunDir, BaseModel], None] | None = None  # refuses a run it cannot finish, before any stage runs

    def __post_init__(self) -> None:
        _RECORDS[self.name] = self  # stage_body finds its record by name when the flow runs

    def with_sets(self, params: BaseModel, sets: list) -> BaseModel:
        """A copy of ``params`` with the pipeline's parallel ``sets`` filled in where it leaves its field unset."""
        params = params.model_copy(deep=True)
        if self.parallel_field and not getattr(params, self.parallel_field):
            setattr(params, self.parallel_field, list(sets))
        return params

    def section(self, params: BaseModel, sets: list) -> dict[str, Any]:
        """``params`` as its config table; a parallel-set field equal to the pipeline's ``sets`` is left unset,
        so a later ``--parallel`` still reaches the stage."""
        table = params.model_dump(mode="json")
        if self.parallel_field and table.get(self.parallel_field) == [str(p) for p in sets]:
            table[self.parallel_field] = []
        return table

    def settle(self, run: RunDir, params: BaseModel | None) -> BaseModel:
        """The parameters this stage runs with on ``run``, recorded as its section of the run's configuration
        (``storage.record``): ``params`` as given, or, left out (a deployment run as it is, a Python caller),
        the run's recorded section, or the demo's on a run directory that records none."""
        recorded = read_record(run)
        base = recorded if recorded is not None else (DEMO if params is None else {})
        sets = list(base.get("parallel", []))
        if params is None:
            params = self.with_sets(self.params.model_validate(base.get(self.name, {})), sets)
        write_record(run, {**base, self.name: self.section(params, sets)})
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


_RECORDS: dict[str, Stage] = {}


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


def incremental(run: RunDir) -> bool:
    """Whether the run directory's recorded configuration asks for incremental runs (``incremental = true``,
    ``xlmflow run --incremental``): the data stages append, the vocabulary stays, training continues."""
    return bool((read_record(run) or {}).get("incremental", False))


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


#: every stage flow's docstring: plain text, for the Prefect UI (flow page and run form), not for Sphinx
FLOW_DOC = """The {name} stage on one run directory.

Args:
    run_dir: the run directory, a local path or an fsspec URL (s3://bucket/run): the stage reads the committed
        outputs of the stages before it there, and commits its own
    params: this stage's settings; left empty, the run directory's recorded configuration (its xlmflow.toml),
        or the bundled demo's for a run directory that has none
"""


def stage_body(name: str):
    """The body of stage ``name``'s flow, however it is started (CLI, deployment, Python): it holds the run
    directory's lock, settles its parameters (:meth:`Stage.settle`: the run's record fills what the caller
    left out, and records what it runs with), and tells the progress display when the stage starts and ends."""

    def wrap(fn):
        @functools.wraps(fn)
        def body(run_dir: str, params: BaseModel | None = None, *args, **kwargs):
            run = RunDir.of(run_dir)
            with run_lock(run.root):
                params = _RECORDS[name].settle(run, params)
                progress.stage(name, "started")
                start = time.monotonic()
                try:
                    ref = fn(run_dir, params, *args, **kwargs)
                except BaseException:
                    progress.stage(name, "failed", time.monotonic() - start)
                    raise
                m = read_manifest(run.stage(name))
                progress.stage(name, "finished", time.monotonic() - start, m.rows if m else None)
                return ref

        body.__doc__ = FLOW_DOC.format(name=name)  # Prefect's run form takes each field's description from it
        body.__signature__ = inspect.signature(fn, eval_str=True)
        body.__annotations__ = typing.get_type_hints(fn)
        return body

    return wrap


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
