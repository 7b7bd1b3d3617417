"""The finetune stage: the pretrained model fine-tuned for translation (:mod:`.stage`).

Like :mod:`xlmflow.tasks.train`, this file imports nothing: the fine-tuning process (``python -m
xlmflow.tasks.finetune.loop``) passes through it and needs none of the stage's Prefect side.
"""

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    stage = importlib.import_module(f"{__name__}.stage")
    if name in globals():
        return globals()[name]
    try:
        return getattr(stage, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
