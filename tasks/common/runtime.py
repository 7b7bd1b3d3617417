"""How a stage's plain functions become Prefect tasks: units, exact caching, retries, logging.

Conventions every stage follows (see README, "How it works"):

* Work is cut into coarse **units** (one per input file or shard, never one per
  document: a task run costs ~30-50 ms of Prefect's own work). A :class:`Unit` names its output folder and
  carries its **fingerprint**: sha256 of the stage, the code of every module the
  stage imports, its parameters and the content fingerprints of its inputs.
* Tasks take and return units and :class:`Ref` (paths + fingerprints), never large
  Python objects: Prefect walks task arguments.
* :class:`OutputCache` keys a task by fingerprint + output location, and only while
  that output is committed and intact; a deleted or corrupt output is a miss and is
  rebuilt. Flows submit units with :func:`submit_units`, which submits only the units
  with work to do: a committed, intact unit costs no task run at all (a no-op rerun
  costs its planning only).
  :func:`ensure` makes the body itself idempotent, so a run whose Prefect cache record
  is gone still does no work when the output is already committed.
* Tasks retry with exponential backoff (I/O fails transiently on remote stores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.tasks import exponential_backoff

from xlmflow.storage import (
    MANIFEST,
    Aside,
    Location,
    Manifest,
    ManifestError,
    commit,
    committed,
    hash_json,
    read_manifest,
    relative,
)
from xlmflow.storage.commit import remove_asides
from xlmflow.tasks.common import progress


@dataclass(frozen=True)
class Ref:
    """A committed output: where it is and what it is (its fingerprint)."""

    uri: str
    fingerprint: str


@dataclass(frozen=True)
class Input:
    """One input of a unit: where it is (not in the key: a moved corpus does no work) and
    what it is (its content fingerprint: file sha256 or an upstream output's fingerprint)."""

    uri: str
    fingerprint: str


@dataclass(frozen=True)
class Unit:
    """One piece of a stage's work: its output folder and everything its bytes depend on.

    The cache key (:attr:`fingerprint`) is the stage, name, code, ``params`` and the content
    fingerprints of ``inputs``; ``options`` (batch sizes and other speed-only settings) are
    given to the body but are not in the key, so changing them does no work again.
    """

    stage: str
    name: str
    out: str
    code_version: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, Input]] = field(default_factory=dict)  # role -> name -> input
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def upstream(self) -> dict[str, str]:
        """Every input's content fingerprint by ``role/name``: what the manifest records."""
        return {
            f"{role}/{name}": i.fingerprint for role, group in sorted(self.inputs.items()) for name, i in group.items()
        }

    @property
    def fingerprint(self) -> str:
        return hash_json([self.stage, self.name, self.code_version, self.params, self.upstream])

    @property
    def ref(self) -> Ref:
        return Ref(self.out, self.fingerprint)

    def each(self, role: str) -> list[tuple[str, Input]]:
        """The inputs of one role, by name."""
        return sorted(self.inputs.get(role, {}).items())

    def input(self, role: str) -> Input:
        """The single input of ``role``."""
        group = self.inputs.get(role, {})
        if len(group) != 1:
            raise KeyError(f"{self.stage}/{self.name}: expected one {role!r} input, found {len(group)}")
        return next(iter(group.values()))


def logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, the ``xlmflow`` logger outside one."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # MissingContextError: called as a plain function
        return logging.getLogger("xlmflow")


def ensure(unit: Unit, build: Callable[[Aside], dict[str, Any] | None], adopt: list | None = None) -> Ref:
    """Commit ``unit``'s output unless an intact one with the same fingerprint is there.

    ``build`` writes files through the :class:`Aside` it is given and may return stats
    for the manifest. ``adopt`` lists files already in place (a stage listing its units').
    """
    loc = Location(unit.out)
    if committed(loc, unit.fingerprint) is not None:
        logger().info(
            "%s/%s: committed output matches fingerprint %s; nothing to do",
            unit.stage,
            unit.name,
            unit.fingerprint[:12],
        )
        return unit.ref
    manifest = Manifest(
        stage=unit.stage,
        unit=unit.name,
        fingerprint=unit.fingerprint,
        code_version=unit.code_version,
        params=unit.params,
        upstream=unit.upstream,
        files=list(adopt or []),
    )
    with commit(loc, manifest) as aside:
        manifest.stats = build(aside) or {}
    logger().info("%s/%s: committed %d files (%s)", unit.stage, unit.name, len(manifest.files), _short(manifest.stats))
    return unit.ref


def unit_manifest(ref: Ref) -> Manifest:
    m = read_manifest(Location(ref.uri))
    if m is None or m.fingerprint != ref.fingerprint:
        raise RuntimeError(f"{ref.uri}: expected a committed output with fingerprint {ref.fingerprint[:12]}")
    return m


class OutputCache(CachePolicy):
    """Cache key = task name + the ``unit`` argument's fingerprint + output location.

    The key is given only while that output is committed and intact, or when the task
    runs with ``refresh_cache`` (it is about to rebuild the output and will overwrite the
    record). Otherwise there is no key: Prefect runs the task and persists nothing, so a
    deleted or corrupt output is rebuilt, never served from cache.
    """

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        unit = inputs.get("unit")
        if not isinstance(unit, Unit):
            return None
        if not task_ctx.task.refresh_cache and committed(Location(unit.out), unit.fingerprint) is None:
            return None
        # the task name too: Prefect's cache records are shared by all tasks
        return "xlmflow-" + hash_json([task_ctx.task.name, unit.fingerprint, unit.out])


@dataclass(frozen=True)
class Current:
    """Stands in for the task run of a unit whose output is committed and intact: its ref, at once."""

    ref: Ref

    def result(self, *args, **kwargs) -> Ref:
        return self.ref


def submit_units(step_task, units: list[Unit], *per_unit: list) -> list:
    """One task run per unit that has work to do (``per_unit``: further arguments, one list each, aligned with
    ``units``); a :class:`Current` for every unit whose output is committed and intact.

    A current unit costs no Prefect task run at all (a run costs ~30-50 ms of Prefect's own work, and a no-op
    rerun of the demo has ~250 units), so a rerun with nothing changed costs only its planning. A unit to
    build runs with ``refresh_cache``, writing the cache record that :class:`OutputCache` serves to a task
    run called outside this function.
    """
    fresh = step_task.with_options(refresh_cache=True)
    current = [committed(Location(u.out), u.fingerprint) is not None for u in units]
    if units:
        n = sum(current)
        logger().info("%s: %d of %d units current, %d to run", step_task.name, n, len(units), len(units) - n)
        progress.units(step_task.name, len(units), n)
    out = []
    for u, is_current, *args in zip(units, current, *per_unit):
        if is_current:
            out.append(Current(u.ref))
            continue
        future = fresh.submit(u, *[a.ref if isinstance(a, Current) else a for a in args])
        future.add_done_callback(lambda f, u=u: progress.unit_done(step_task.name, _rows(u)))
        out.append(future)
    return out


def _rows(unit: Unit) -> int:
    """Rows a finished unit committed (0 when it failed): what the terminal's rows/s counts."""
    m = read_manifest(Location(unit.out))
    return m.rows if m is not None and m.fingerprint == unit.fingerprint else 0


def run_unit(step_task, unit: Unit, *args):
    """One unit's task run, waited for (a stage commit, say); see :func:`submit_units`."""
    return submit_units(step_task, [unit], *[[a] for a in args])[0].result()


#: failures that another attempt cannot mend: bad input or configuration, a missing upstream stage
PERMANENT = (ValueError, TypeError, KeyError, ManifestError, FileNotFoundError, PermissionError)


def transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry I/O errors and failed training processes (which resume),
    not permanent errors (:data:`PERMANENT`), which fail at once with their message."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the failure itself could not be read back: give it another attempt
        return True
    return not isinstance(exc, PERMANENT)


#: names of the unit tasks: a run of one is named ``<task name>-<unit name>``
UNIT_TASKS: set[str] = set()


def step(name: str | None = None, retries: int = 2, **kwargs):
    """``@task`` for units, with xlmflow's conventions: output-aware cache, retries of transient errors with
    backoff, and a run name saying what it works on (``langid-score-<unit>``)."""
    if name:
        UNIT_TASKS.add(name)
    return task(
        name=name,
        cache_policy=OutputCache(),
        persist_result=True,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=2),
        retry_jitter_factor=0.5,
        retry_condition_fn=transient,
        task_run_name=f"{name}-{{unit.name}}" if name else None,
        **kwargs,
    )


def plain_step(name: str, retries: int = 2):
    """``@task`` for planning and reporting: not cached (cheap, and must see the current inputs), transient
    errors retried."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=2),
        retry_condition_fn=transient,
        cache_policy=NO_CACHE,
    )


def _short(stats: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, (int, float, str)))[:200]


# ---------------------------------------------------------------- stage commits
def stage_unit(
    stage_uri: str,
    stage: str,
    refs: list[Ref],
    code: str,
    params: dict[str, Any],
    inputs: dict[str, dict[str, Input]] | None = None,
) -> Unit:
    """The unit that commits a whole stage: it depends on exactly its units' fingerprints."""
    units = {relative(stage_uri, r.uri): Input(r.uri, r.fingerprint) for r in refs}
    return Unit(
        stage=stage,
        name="_stage",
        out=stage_uri,
        code_version=code,
        params=params,
        inputs={**(inputs or {}), "units": units},
    )


def commit_stage(unit: Unit, refs: list[Ref], build: Callable[[Aside], dict[str, Any] | None] | None = None) -> Ref:
    """Write the stage manifest last: every unit's files (bytes, sha256, rows) and summed stats.

    Unit folders the stage no longer produces (their input was removed) are deleted
    first; ``build`` may add stage-level files (a report, stats) and stats of its own.
    """
    stage_loc = Location(unit.out)
    keep = {r.uri for r in refs}
    for group in stage_loc.subfolders():  # every group, also one that no unit uses any more
        remove_asides(stage_loc.child(group))
        if stage_loc.child(group, MANIFEST).exists():  # a unit of its own at the top (finetune/translate)
            if stage_loc.child(group).uri not in keep:
                logger().info("%s: removing %s (no unit makes it any more)", unit.stage, group)
                stage_loc.fs.rm(stage_loc.child(group).path, recursive=True)
            continue
        _remove_stale_units(unit.stage, stage_loc.child(group), keep)
    manifests = [unit_manifest(r) for r in refs]
    adopt = [replace(f, path=f"{relative(unit.out, r.uri)}/{f.path}") for r, m in zip(refs, manifests) for f in m.files]

    def build_stage(aside: Aside) -> dict[str, Any]:
        extra = build(aside) if build else None
        return sum_stats([m.stats for m in manifests]) | {"units": len(refs)} | (extra or {})

    return ensure(unit, build_stage, adopt=adopt)


def _remove_stale_units(stage: str, folder: Location, keep: set[str]) -> None:
    """Delete the unit folders below ``folder`` (a folder holding a manifest, at any depth: ``lang=fr/inc=0002``)
    that no unit makes any more, and the partition folders that leaves empty."""
    for name in folder.subfolders():
        loc = folder.child(name)
        remove_asides(loc)  # a killed commit's leftovers in a unit that is current (so never committed again)
        if loc.child(MANIFEST).exists():
            if loc.uri not in keep:
                logger().info("%s: removing %s (its input is gone)", stage, loc)
                loc.fs.rm(loc.path, recursive=True)
            continue
        _remove_stale_units(stage, loc, keep)
        if not loc.fs.ls(loc.path):
            loc.fs.rmdir(loc.path)


def sum_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up numbers key by key, recursing into nested dicts (per-language counts)."""
    total: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, dict):
                total[k] = sum_stats([total.get(k, {}), v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def stale_reasons(
    m: Manifest, code: str, params: dict[str, Any], stages: dict[str, str | None], section: str = ""
) -> list[str]:
    """Why a committed stage (its manifest ``m``) would do work on the next run, as a person reads it:
    its code changed, which parameters changed, which upstream stage changed since it was built.

    ``code``: the stage module's current :func:`code_version`; ``params``: the configured section as JSON
    (a key the manifest does not record, or one left to a derived default (None), is not compared), named
    ``section.key`` when ``section`` (the stage's config table) is given;
    ``stages``: every stage's current manifest fingerprint (None: not committed). Empty: current. Inputs
    outside the run directory (a source file's bytes) are not looked at: ``xlmflow run`` hashes those.
    """
    reasons = []
    if m.code_version != code:
        reasons.append("code changed")
    changed = [
        f"{section}.{k}" if section else k for k in sorted(m.params) if k in params and _differs(m.params[k], params[k])
    ]
    if changed:
        reasons.append(f"params changed ({', '.join(changed)})")
    for key, fingerprint in sorted(m.upstream.items()):
        name, _, what = key.partition("/")
        if what == "stage" and name in stages and stages[name] != fingerprint:
            reasons.append(f"upstream {name} " + ("missing" if stages[name] is None else "changed"))
    return reasons


def _differs(recorded: Any, now: Any) -> bool:
    """Whether a configured value differs from the recorded one, comparing only what was recorded (a stage
    records some fields of a section, e.g. not a source's path) and not values left to a default (None)."""
    if now is None:
        return False
    if isinstance(recorded, dict) and isinstance(now, dict):
        return any(_differs(v, now[k]) for k, v in recorded.items() if k in now)
    if isinstance(recorded, list) and isinstance(now, list):
        return len(recorded) != len(now) or any(_differs(a, b) for a, b in zip(recorded, now))
    return recorded != now


def invalidate_stage(run_dir: str, stage: str) -> int:
    """Make a stage's committed outputs not outputs any more, so the next run rebuilds them (``--force``)."""
    from xlmflow.storage import RunDir, invalidate

    n = invalidate(RunDir.of(run_dir).stage(stage))
    logger().info("%s: forced: %d manifests removed, every unit is rebuilt", stage, n)
    return n


invalidate_task = plain_step("invalidate")(invalidate_stage)
