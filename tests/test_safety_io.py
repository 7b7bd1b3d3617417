"""Nothing a run reads back is unpickled: model weights are safetensors, checkpoint states load with
``weights_only=True`` (or are JSON), and a model folder holding only a pickled ``.bin`` is refused."""

import shutil
from pathlib import Path

import pytest
from test_train import PARAMS, build_inputs

from xlmflow.storage import RunDir
from xlmflow.tasks import train
from xlmflow.tasks.train import loop as train_loop

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SHORT = PARAMS.model_copy(update={"max_steps": 4, "checkpoint_every": 2, "eval_every": 4, "log_every": 2})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run in this process (so torch.load can be watched), leaving its step-2 checkpoint."""
    run_dir = tmp_path_factory.mktemp("safety") / "run"
    build_inputs(str(run_dir))
    unit = train.plan(RunDir.of(str(run_dir)), SHORT)
    spec = train.spec_of(unit)
    train_loop.run(spec)
    return run_dir, unit, spec


def test_trained_model_folder_holds_no_pickled_weights(trained):
    _, _, spec = trained
    names = {p.name for p in Path(spec["final"]).iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)], names


def test_checkpoint_weights_are_safetensors_and_states_are_not_pickled_objects(trained):
    _, _, spec = trained
    step = Path(spec["checkpoints"]) / "step-0000002"
    names = {p.name for p in step.iterdir()}
    assert "model.safetensors" in names and train_loop.STATE in names, names
    assert "pytorch_model.bin" not in names, "model weights pickled"
    assert not [n for n in names if n.startswith("custom_checkpoint")], "registered objects are pickled by accelerate"


def test_resume_loads_every_torch_file_with_weights_only(trained, monkeypatch, capsys):
    import torch
    from accelerate.utils import load as accelerate_load

    _, _, spec = trained
    step = Path(spec["checkpoints"]) / "step-0000002"
    rng = accelerate_load(step / "random_states_0.pkl")  # the RNG state loads under weights_only (numpy allowed)
    assert "numpy_random_seed" in rng and "torch_manual_seed" in rng
    shutil.rmtree(spec["final"])
    calls = []
    real = torch.load

    def watched(*args, **kwargs):
        calls.append((str(args[0] if args else kwargs.get("f")), kwargs.get("weights_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", watched)
    capsys.readouterr()
    train_loop.run(spec)
    assert "resumed from checkpoint step-0000002 at step 2" in capsys.readouterr().out
    assert calls, "nothing was loaded with torch.load"
    assert all(w is True for _, w in calls), f"loaded without weights_only=True: {calls}"
    assert (Path(spec["final"]) / "model.safetensors").exists()


def test_evaluation_refuses_a_model_folder_with_only_pickled_weights(trained, tmp_path):
    import torch
    from safetensors.torch import load_file

    from xlmflow.tasks import evaluate

    _, _, spec = trained
    folder = tmp_path / "model"
    shutil.copytree(spec["final"], folder)
    shutil.copyfile(Path(spec["vocab"]) / "tokenizer.json", folder / "tokenizer.json")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        evaluate._load_model(str(folder), "pickled")
