"""Every stage, in pipeline order. The CLI, the config sections, the pipeline, ``status``
and the deployments are derived from this list (tests/test_registry.py checks each)."""

from __future__ import annotations

from xlmflow.flows import evaluate, finetune, ingest, langid, shard, train, vocab
from xlmflow.flows.stage import Stage

STAGES: list[Stage] = [
    ingest.STAGE,
    langid.STAGE,
    vocab.STAGE,
    shard.STAGE,
    train.STAGE,
    finetune.STAGE,
    evaluate.STAGE,
]
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
