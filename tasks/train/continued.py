"""Continued training (incremental runs): a training process starts from the last model's weights and AdamW
state instead of a fresh initialisation.

Weights load where the shapes match; a language embedding table is copied row by row by language name, so a
language new to training gets a fresh row and the others keep theirs. The optimiser state loads only when
every parameter's shape matches (a new language leaves it fresh); its hyper-parameters are this run's.
Nothing is pickled: weights and the optimiser state are safetensors (the param groups as JSON in its metadata).
"""

from __future__ import annotations

import json
from pathlib import Path

OPTIMIZER = "optimizer.safetensors"  # the AdamW state, saved beside the model for the next continued training
WEIGHTS = "model.safetensors"


def start_from(spec: dict, model, optimizer) -> str:
    """Load the base model's weights (and AdamW state) named by the spec into ``model`` (and ``optimizer``);
    returns what was loaded, for the log line the parent notes (``continued from ...``)."""
    base, c, t = Path(spec["init_from"]), spec["continued"], spec["train"]
    loaded, fresh = load_weights(model, base)
    with_state = load_optimizer(optimizer, base)
    return (
        f"model {c['from'][:12]} ({c['version']}: {c['total_steps']} steps through increment {c['increment']}): "
        f"{loaded} tensors loaded"
        + (f", {len(fresh)} fresh ({', '.join(fresh[:3])})" if fresh else "")
        + (", AdamW state loaded" if with_state else ", AdamW state fresh")
        + f"; {t['max_steps']} steps on {len(spec['fresh'])} new shards, replay {t['replay']:.0%}"
    )


def load_weights(model, folder: Path) -> tuple[int, list[str]]:
    """Copy the weights of the model in ``folder`` into ``model``; returns (tensors loaded, names left fresh)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(folder / WEIGHTS))
    old_langs = json.loads((folder / "config.json").read_text()).get("langs", [])
    new_langs = list(model.config.langs or [])
    own = model.state_dict()
    take, fresh = {}, []
    for name, tensor in own.items():
        old = saved.get(name)
        if (
            old is not None
            and old.shape == tensor.shape
            and (not name.endswith("lang_embeddings.weight") or old_langs == new_langs)
        ):
            take[name] = old
        elif old is not None and name.endswith("lang_embeddings.weight"):  # rows by language (row 0: none)
            rows = tensor.clone()
            rows[0] = old[0]
            for i, lang in enumerate(new_langs):
                if lang in old_langs:
                    rows[i + 1] = old[old_langs.index(lang) + 1]
            take[name] = rows
        elif name in saved or not _tied(model, name):
            fresh.append(name)
    with torch.no_grad():
        model.load_state_dict(take, strict=False)
    return len(take), fresh


def _tied(model, name: str) -> bool:
    """Whether ``name`` is the output layer tied to the input embeddings (saved once, under the embeddings)."""
    return name == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", True))


def load_optimizer(optimizer, folder: Path) -> bool:
    """Load the AdamW state saved in ``folder`` when every parameter's shape matches; this run's learning rate,
    betas and weight decay stay. False: no state there, or shapes differ (the optimiser starts fresh)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / OPTIMIZER
    if not path.exists():
        return False
    with safe_open(str(path), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    saved: dict[int, dict] = {}
    for key, tensor in load_file(str(path)).items():
        index, _, name = key.partition(".")
        saved.setdefault(int(index), {})[name] = tensor
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if len(saved) != len(params) or any(
        saved[i]["exp_avg"].shape != p.shape for i, p in enumerate(params) if i in saved
    ):
        return False
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": saved, "param_groups": groups})
    for group, keep in zip(optimizer.param_groups, hyper):
        group.pop("initial_lr", None)
        group.update(keep)
    return True


def save_optimizer(optimizer, folder: Path) -> None:
    """The AdamW state as safetensors (tensors ``<param index>.<name>``; the param groups as JSON in its metadata):
    no pickle in a model folder."""
    import torch
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {
        f"{i}.{name}": value.detach().contiguous()
        for i, entry in state["state"].items()
        for name, value in entry.items()
        if torch.is_tensor(value)
    }
    save_file(tensors, str(folder / OPTIMIZER), metadata={"param_groups": json.dumps(state["param_groups"])})
