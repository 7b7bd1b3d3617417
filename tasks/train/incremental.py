"""Incremental runs of the train stage: a committed model that has seen every increment is current; one that has
not continues on the new increments' shards (:mod:`.continued` in the training process), and is first kept as a
version (``versions/train``, :mod:`xlmflow.storage.increments`) that ``xlmflow rollback`` restores.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from xlmflow.storage import Location, Manifest, RunDir, committed, file_sha256, read_manifest
from xlmflow.storage.increments import EVALUATION, Version, archive, restore, versions
from xlmflow.storage.shards import INDEX
from xlmflow.tasks.common.runtime import Input, Ref, Unit, logger
from xlmflow.tasks.train.continued import WEIGHTS
from xlmflow.tasks.train.params import TrainParams

STAGE, SHARD, EVALUATE = "train", "shard", "evaluate"


def shard_rows(shard_loc: Location) -> list[dict[str, Any]]:
    """The shard index's rows (``shards.json``): path, split, language, tokens, increment of every shard."""
    with shard_loc.child(INDEX).open("rb") as f:
        return [{"increment": 1} | r for r in json.loads(f.read())["shards"]]


def committed_model(run: RunDir) -> Manifest | None:
    """The committed, whole model of ``train/`` (None: none)."""
    loc = run.stage(STAGE)
    m = read_manifest(loc)
    return m if m is not None and committed(loc, m.fingerprint) is not None else None


def base_model(run: RunDir) -> Manifest | None:
    """The model an incremental run continues from: the committed one, else the newest kept version (a commit
    killed half way, or a deleted ``train/``: the next run continues from what the killed one did)."""
    m = committed_model(run)
    if m is None and (kept := versions(run, STAGE)):
        m = read_manifest(kept[-1].loc)
    return m


def covered(run: RunDir) -> Ref | None:
    """In an incremental run, the committed model when it has trained on every increment the shards hold (nothing
    new to train on; a changed setting waits for new data), else None: the model to train or continue."""
    m = committed_model(run)
    shards = read_manifest(run.stage(SHARD))
    if m is None or shards is None:
        return None
    latest = max((r["increment"] for r in shard_rows(run.stage(SHARD)) if r["split"] == "train"), default=1)
    return Ref(run.stage(STAGE).uri, m.fingerprint) if m.params.get("increment", 1) >= latest else None


def continued(run: RunDir, params: TrainParams, unit: Unit, base: Manifest) -> Unit:
    """``unit`` turned into a continued training (incremental runs): from ``base`` (the committed model, first
    kept as a version), on the train shards of the increments it has not seen, for steps set by their tokens
    (``continue_epochs`` passes, between ``continue_min_steps`` and ``continue_max_steps``), a re-warm of
    ``rewarm_fraction`` of them then the decay, and a replay share of the earlier shards (``replay_share``;
    ``replay_new_language`` when a language is new to training). The model keeps the base's shape."""
    version = keep_current(run, params.keep_versions)
    if version is None or version.fingerprint != base.fingerprint:  # train/ is not whole: the base is a version
        version = next(v for v in versions(run, STAGE) if v.fingerprint == base.fingerprint)
    seen = base.params.get("increment", 1)
    rows = shard_rows(run.stage(SHARD))
    fresh = [r for r in rows if r["split"] == "train" and r["increment"] > seen]
    t = dict(unit.params["train"])
    new_langs = sorted(set(unit.params["langs"]) - set(base.params["langs"]))
    replay = replay_of(params, rows, seen, t["alpha"], bool(new_langs))
    new_tokens = sum(r["tokens"] for r in fresh)
    steps = continued_steps(rows, params, base, t, new_tokens, replay)
    t |= {
        "max_steps": steps,
        "warmup_steps": max(1, math.ceil(steps * params.rewarm_fraction)),
        "replay": replay,
        "lr": t["lr"] * params.continue_lr_scale,
    }
    if unit.params["model"] != base.params["model"]:
        logger().warning(
            "train: continuing keeps the model's shape %s; the configured one waits for a full rebuild",
            base.params["model"],
        )
    weights = version.loc.child(WEIGHTS)
    continued = {
        "from": base.fingerprint,
        "version": version.name,
        "increment": seen,
        "total_steps": base.stats.get("total_steps", base.stats.get("steps", 0)),
        "fresh": [r["path"] for r in fresh],
        "new_tokens": new_tokens,
        "new_languages": new_langs,
    }
    logger().info(
        "train: continuing from %s (%s, increment %d): %d new train shards, %d tokens, %d steps, replay %.0f%%",
        base.fingerprint[:12],
        version.name,
        seen,
        len(fresh),
        new_tokens,
        steps,
        100 * replay,
    )
    return replace(
        unit,
        params=unit.params | {"model": base.params["model"], "train": t, "continued": continued},
        inputs=unit.inputs | {"base": {WEIGHTS: Input(weights.uri, file_sha256(weights.fs, weights.path)[0])}},
    )


def replay_of(params: TrainParams, rows: list[dict], seen: int, alpha: float, new_language: bool) -> float:
    """The replay share of a continued training: ``replay_share`` (``replay_new_language`` when a language is new
    to training), raised to the shift between the old data's language mixture and the new data's (their total
    variation distance, both mixtures tempered by ``alpha`` as the loader draws them), at most ``replay_max``: a
    night that brings one language of twenty would otherwise train the other nineteen out of the model. On the
    demo (one language added to twenty) 10% replay raised the validation loss of 19 languages by up to 0.9 nats;
    75% kept 17 within 0.02 (bench/RESULTS.md, "Incremental runs")."""
    old: dict[str, int] = {}
    new: dict[str, int] = {}
    for r in rows:
        if r["split"] == "train":
            side = old if r["increment"] <= seen else new
            side[r["lang"]] = side.get(r["lang"], 0) + r["tokens"]
    q_old, q_new = _tempered(old, alpha), _tempered(new, alpha)
    shift = 0.5 * sum(abs(q_old.get(x, 0.0) - q_new.get(x, 0.0)) for x in q_old.keys() | q_new.keys())
    base = params.replay_new_language if new_language else params.replay_share
    return round(min(params.replay_max, max(base, shift)), 4)


def _tempered(tokens: dict[str, int], alpha: float) -> dict[str, float]:
    total = sum(tokens.values())
    w = {x: (n / total) ** alpha for x, n in tokens.items() if n} if total else {}
    return {x: v / sum(w.values()) for x, v in w.items()}


def continued_steps(
    rows: list[dict], params: TrainParams, base: Manifest, t: dict, new_tokens: int, replay: float
) -> int:
    """Steps of a continued training on ``new_tokens``: ``continue_epochs`` passes over them (None: as many as the
    model made over the tokens it has trained on, at most one, so new data weighs what old data did), the replay
    blocks on top, between ``continue_min_steps`` (at most ``max_steps``) and ``continue_max_steps`` (None: a fifth
    of ``max_steps``)."""
    step_tokens = t["batch_size"] * t["block_size"] * t["grad_accum"] * t["num_processes"]
    passes = params.continue_epochs
    if passes is None:
        seen = base.params.get("increment", 1)
        old = sum(r["tokens"] for r in rows if r["split"] == "train" and r["increment"] <= seen)
        trained = base.stats.get("total_steps", base.stats.get("steps", 0)) * step_tokens
        passes = min(1.0, trained / old) if old else 1.0
    steps = math.ceil(passes * new_tokens / ((1 - replay) * step_tokens))
    floor = min(params.continue_min_steps, t["max_steps"])  # never more than a whole first training
    cap = params.continue_max_steps or max(floor, t["max_steps"] // 5)
    return min(max(steps, floor), cap)


def keep_current(run: RunDir, keep: int) -> Version | None:
    """Keep the committed model as a version (with its evaluation, when the evaluate stage's is of it)."""
    m = read_manifest(run.stage(STAGE))
    evaluated = _evaluation_of(run, m.fingerprint) if m is not None else None
    return archive(run, STAGE, keep, {EVALUATION: evaluated} if evaluated else None)


def rollback(run: RunDir, to: str | None, keep: int) -> Version:
    """Make an earlier version the committed model (``to``: its name or number, e.g. ``v0001``; None: the newest
    one that is not the current model). The current model is kept as a version first, so this can be undone."""
    current = read_manifest(run.stage(STAGE))
    kept = versions(run, STAGE)
    if to is not None:
        chosen = [v for v in kept if to in (v.name, f"v{v.number:04d}", str(v.number))]
    else:
        chosen = [v for v in kept if current is None or v.fingerprint != current.fingerprint][-1:]
    if not chosen:
        names = ", ".join(v.name for v in kept) or "none"
        raise ValueError(f"{run.root}: no earlier model {to or ''} to roll back to (kept versions: {names})")
    keep_current(run, max(keep, len(kept) + 1))  # never drops the one being restored
    restore(run, STAGE, chosen[0])
    return chosen[0]


def _evaluation_of(run: RunDir, model_fingerprint: str) -> Location | None:
    """The evaluate stage's metrics when they are of the model ``model_fingerprint`` (kept with its version, so the
    next report compares the two)."""
    m = read_manifest(run.stage(EVALUATE))
    if m is None or m.upstream.get("train/stage") != model_fingerprint:
        return None
    loc = run.stage(EVALUATE).child("metrics.json")
    return loc if loc.exists() else None


def estimated_steps(run: RunDir, params: TrainParams, seen_bytes: int, new_bytes: int) -> int | None:
    """About how many steps a continued training would take for ``new_bytes`` of input, at the tokens per input
    byte of the ``seen_bytes`` so far (None: no committed model or shards to go by)."""
    base = committed_model(run)
    if base is None or read_manifest(run.stage(SHARD)) is None or not seen_bytes:
        return None
    rows = shard_rows(run.stage(SHARD))
    tokens = sum(r["tokens"] for r in rows if r["split"] == "train")
    t = base.params["train"]
    t = t | {"max_steps": params.training_resolved(tokens, t["block_size"])["max_steps"]}  # not the last night's
    return continued_steps(rows, params, base, t, round(new_bytes * tokens / seen_bytes), params.replay_max)
