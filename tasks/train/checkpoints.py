"""Training checkpoints: ``step-NNNNNNN/`` folders written aside and renamed, each recording the configuration
(the unit's fingerprint) that wrote it, so a checkpoint of another configuration is never resumed.

Nothing in a checkpoint is unpickled: the model is ``model.safetensors``; optimiser and RNG states load with
``torch.load(weights_only=True)``; the scheduler and data position are JSON in :data:`STATE`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STEP_PREFIX = "step-"
STATE = "xlmflow_state.json"  # per checkpoint: fingerprint, scheduler and loader state (JSON, never pickled)


def latest_checkpoint(folder: Path, fingerprint: str | None = None) -> Path | None:
    """The last complete checkpoint in ``folder``; with ``fingerprint``, the last one written by that
    configuration (others, or ones without an :data:`STATE`, are passed over with a message)."""
    done = sorted(p for p in folder.glob(f"{STEP_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))
    if fingerprint is None:
        return done[-1] if done else None
    for p in reversed(done):
        owner = checkpoint_owner(p)
        if owner == fingerprint:
            return p
        whose = f"it was written by configuration {owner[:16]}" if owner else "it records no configuration"
        print(f"not resuming from {p}: {whose}, not {fingerprint[:16]}")
    return None


def checkpoint_owner(path: Path) -> str | None:
    """The fingerprint recorded in a checkpoint (None: none, or unreadable)."""
    try:
        return json.loads((path / STATE).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def save_checkpoint(accelerator, ckdir: Path, step: int, keep: int, state: dict) -> None:
    """``accelerator.save_state`` (model as safetensors) and ``state`` as JSON into ``step-N.tmp``,
    renamed to ``step-N`` once every rank has written."""
    name = f"{STEP_PREFIX}{step:07d}"
    tmp = ckdir / f"{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE).write_text(json.dumps(state, sort_keys=True))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(ckdir / name, ignore_errors=True)  # one not resumed (another configuration's) gives way
        tmp.rename(ckdir / name)
        done = sorted(p for p in ckdir.glob(f"{STEP_PREFIX}*") if not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, path: Path, scheduler, loader) -> None:
    """Model (safetensors), optimiser and RNG (``weights_only=True``: tensors and plain values only, no
    code run while loading), then the scheduler and data position from :data:`STATE`."""
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    state = json.loads((path / STATE).read_text())
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
