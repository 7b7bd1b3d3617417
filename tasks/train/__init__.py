"""The train stage: the model trained on the shard stage's tokens with the vocab stage's tokenizer (:mod:`.stage`).

Its names (``plan_task``, ``train_task``, ``TrainParams``...) are those of :mod:`.stage`, loaded on first use:
this file imports nothing, because every training process (``python -m xlmflow.tasks.train.loop``, alone or
under torchrun / ``accelerate launch``) passes through it, and the stage's Prefect side would cost each process
~2 s of imports it never uses. :mod:`.loop`, :mod:`.data`, :mod:`.build` and :mod:`.checkpoints` (the training
process) import neither Prefect nor :mod:`.stage` (tests/test_imports.py).
"""

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    stage = importlib.import_module(f"{__name__}.stage")
    if name in globals():  # a submodule, set here by its import
        return globals()[name]
    try:
        return getattr(stage, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
