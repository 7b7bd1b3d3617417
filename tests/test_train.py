"""The train stage on real committed shards with a tiny model: commit, load, generate, resume, two processes, bf16."""

import hashlib
import json
import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from shard_fixtures import corpus, make_inputs

from xlmflow.storage import Location, RunDir, load_output, write_table
from xlmflow.tasks import train
from xlmflow.tasks.common.runtime import Unit, ensure
from xlmflow.tasks.shard import ShardParams, commit_shards, shard_unit, stage_for
from xlmflow.tasks.shard import plan as plan_shards
from xlmflow.tasks.train import loop as train_loop

SIZES = {"en": 120, "fr": 80, "zh": 40}
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}
PARAMS = train.TrainParams(
    model=TINY,
    max_steps=12,
    batch_size=4,
    warmup_steps=2,
    eval_every=6,
    eval_blocks=2,
    log_every=2,
    checkpoint_every=4,
    lr=5e-3,
)
ALIGNED = {"Ġchat": "Ġcat", "Ġchien": "Ġdog"}  # French token -> its English anchor (byte-level: Ġ is a space)


def build_inputs(run_dir: str):
    """Committed langid, vocab (tokenizer + alignment table) and shard stages."""
    tok = make_inputs(run_dir, corpus(SIZES))
    run = RunDir.of(run_dir)
    vocab = run.stage("vocab")
    n = tok.get_vocab_size()
    anchors = np.arange(n, dtype=np.int32)
    for fr, en in ALIGNED.items():
        ids = tok.token_to_id(fr), tok.token_to_id(en)
        assert None not in ids, f"the fixture's aligned pair {fr}/{en} is not in the vocabulary"
        anchors[ids[0]] = ids[1]
    ids = pa.array(np.arange(n, dtype=np.int32))
    table = pa.table({"token_id": ids, "anchor_id": pa.array(anchors), "tie_id": pa.array(anchors)})

    def build(aside):
        with aside.path("tokenizer.json").open("wb") as f:
            f.write(tok.to_str().encode())
        write_table(aside.path("alignment.parquet"), table)
        return {"languages": sorted(SIZES), "vocab_size": n}

    ensure(
        Unit(stage="vocab", name="_stage", out=vocab.uri, code_version="test-align", params={"t": tok.to_str()}), build
    )
    params = ShardParams(shard_docs=40, min_valid_docs=4, valid_fraction=0.05, row_group_tokens=500)
    refs = [shard_unit(u) for u in plan_shards(run, params)]
    commit_shards(stage_for(run, params, refs), refs)
    return tok


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A run directory holding the inputs only, copied for each test that trains."""
    root = tmp_path_factory.mktemp("train-inputs") / "run"
    tok = build_inputs(str(root))
    return root, tok


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    """One uninterrupted training run of PARAMS."""
    root, tok = inputs
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(root, run_dir)
    unit = train.plan(RunDir.of(str(run_dir)), PARAMS)
    ref = train.train_unit(unit)
    return run_dir, unit, ref, tok


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_committed_model_loads_generates_and_reruns_as_a_no_op(trained, caplog):
    run_dir, unit, ref, _ = trained
    folder = Path(run_dir) / "train"
    m = load_output(RunDir.of(str(run_dir)).stage("train"), "train")
    names = {f.path for f in m.files}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "modeling_xlmflow.py",
        "tokenizer.json",
        "metrics.jsonl",
        "summary.json",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))], "weights only as safetensors"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["loss_last"] < summary["loss_first"] - 0.3, summary
    assert set(summary["valid_loss"]) == set(SIZES) and all(np.isfinite(v) for v in summary["valid_loss"].values())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in rows if "valid_loss" in r] == [6, 12]
    ckpt = Path(unit.options["checkpoints"])
    assert not ckpt.exists(), f"checkpoints removed once committed: {sorted(ckpt.rglob('*'))}"
    assert not (Path(run_dir) / ".checkpoints").exists(), "no empty .checkpoints/train left behind"

    import transformers

    import xlmflow  # noqa: F401  (registers the model class with the Auto classes)

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "XlmGPT2LMHeadModel" and model.config.langs == sorted(SIZES)
    out = transformers.pipeline("text-generation", model=model, tokenizer=tok)(
        "<lang:fr> le chat", max_new_tokens=8, do_sample=False
    )
    new = tok(out[0]["generated_text"])["input_ids"][len(tok("<lang:fr> le chat")["input_ids"]) :]
    assert not set(new) & set(model.config.lang_token_ids), "generation emitted a language tag"

    caplog.set_level(logging.INFO, logger="xlmflow")
    assert train.train_unit(unit) == ref
    assert "nothing to do" in caplog.text and "training exited" not in caplog.text


def test_killed_training_resumes_from_its_checkpoint_to_the_same_weights(inputs, trained, tmp_path, caplog):
    root, _ = inputs
    run_dir = tmp_path / "run"
    shutil.copytree(root, run_dir)
    unit = train.plan(RunDir.of(str(run_dir)), PARAMS)
    assert unit.fingerprint == trained[1].fingerprint, "same inputs and parameters: same unit"
    ckpt = Path(unit.options["checkpoints"])
    ckpt.mkdir(parents=True)
    (ckpt / "spec.json").write_text(json.dumps(train.spec_of(unit)))
    proc = subprocess.Popen(
        train.command(unit, str(ckpt / "spec.json")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt / "step-0000008").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / "step-0000008").exists() and not (ckpt / "final").exists(), "killed too early or too late"

    caplog.set_level(logging.INFO, logger="xlmflow")
    train.train_unit(unit)  # what a Prefect retry or a rerun calls
    assert "resumed from checkpoint step-0000008 at step 8" in caplog.text
    ours, theirs = Path(run_dir) / "train", Path(trained[0]) / "train"
    assert sha(ours / "model.safetensors") == sha(theirs / "model.safetensors"), "resumed weights differ"
    assert (ours / "metrics.jsonl").read_bytes() == (theirs / "metrics.jsonl").read_bytes()


def test_changed_parameters_never_resume_a_stale_checkpoint(inputs):
    root, _ = inputs
    run = RunDir.of(str(root))
    a, b = train.plan(run, PARAMS), train.plan(run, PARAMS.model_copy(update={"lr": 1e-3}))
    assert a.options["checkpoints"] != b.options["checkpoints"] and a.fingerprint != b.fingerprint
    speed_only = train.plan(run, PARAMS.model_copy(update={"log_every": 3, "checkpoint_every": 5}))
    assert speed_only.fingerprint == a.fingerprint


@pytest.mark.slow
def test_two_processes_train_on_disjoint_documents(inputs, tmp_path):
    root, _ = inputs
    run_dir = tmp_path / "run"
    shutil.copytree(root, run_dir)
    params = PARAMS.model_copy(update={"num_processes": 2, "max_steps": 6, "record_documents": True})
    unit = train.plan(RunDir.of(str(run_dir)), params)
    assert train.command(unit, "spec.json")[2] == "torch.distributed.run"
    train.train_unit(unit)
    read = [json.loads((run_dir / "train" / f"documents-rank-{r}.json").read_text()) for r in (0, 1)]
    for lang in SIZES:
        r0, r1 = set(read[0][lang]), set(read[1][lang])
        assert r0 and r1 and not r0 & r1, f"{lang}: ranks read the same documents"
        assert {d % 2 for d in r0} == {0} and {d % 2 for d in r1} == {1}
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 6 * 2 * 4 * 32

    import transformers

    import xlmflow  # noqa: F401

    assert transformers.AutoModelForCausalLM.from_pretrained(run_dir / "train").config.n_layer == 1


def test_bf16_autocast_runs_on_cpu(inputs, tmp_path):
    """The GPU path's precision, exercised on the CPU: bf16 autocast, fp32 weights saved; with ``align = "tie"``
    the aligned token reads its anchor's input row, after training too."""
    import torch
    import transformers

    from xlmflow.tasks.common.model import register

    register()  # the Auto classes know xlmflow-gpt2 whatever this process imported first (as evaluate does)
    root, tok = inputs
    run_dir = tmp_path / "run"
    shutil.copytree(root, run_dir)
    params = PARAMS.model_copy(update={"precision": "bf16", "max_steps": 3, "align": "tie"})
    unit = train.plan(RunDir.of(str(run_dir)), params)
    train.train_unit(unit)
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert np.isfinite(summary["loss_last"]) and summary["loss_last"] != summary["loss_first"], "it did not train"
    assert summary["precision"] == "bf16"
    config = json.loads((run_dir / "train" / "config.json").read_text())
    assert config["dtype"] == "float32" and len(config["anchor_ids"]) == config["vocab_size"]

    cat, chat, tag = tok.token_to_id("Ġcat"), tok.token_to_id("Ġchat"), tok.token_to_id("<lang:fr>")
    model = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "train").eval()
    # trained with eager attention on a CPU in bf16 (tasks/common/precision.py); loaded with the library's default
    assert model.config._attn_implementation == "sdpa"
    assert model.anchor_map[chat] == cat and config["anchor_ids"][chat] == cat, "chat does not read cat's row"
    with torch.no_grad():
        ids = torch.tensor([[tag, chat], [tag, cat]])
        first = model(ids, output_hidden_states=True).hidden_states[0]  # the embeddings the blocks see
        assert torch.equal(first[0, 1], first[1, 1]), "tie is not active: chat and cat enter the model differently"
        wte = model.transformer.wte.weight
        assert not torch.equal(wte[chat], wte[cat]), "their output rows (the tied head) stay their own"
    assert (model.anchor_map != torch.arange(len(model.anchor_map))).sum() >= 1


def test_gradient_accumulation_equals_one_batch_four_times_the_size():
    """``grad_accum = 4`` through the loop's own step gives the loss and gradients of one batch of all the rows
    (CPU, fp32), micro-batches holding different numbers of targets (a mean of means would differ)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from xlmflow.tasks.common.model import XlmGPT2Config, XlmGPT2LMHeadModel

    torch.manual_seed(0)
    config = XlmGPT2Config(
        vocab_size=60,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        lang_token_ids=[3, 4],
        langs=["en", "fr"],
        **train.DROPOUT_OFF,  # as training runs: no dropout, so both passes see the same network
    )
    model = XlmGPT2LMHeadModel(config).train()
    ids = torch.randint(5, 60, (16, 16))
    labels = ids.masked_fill(torch.rand(16, 16) < torch.linspace(0.05, 0.8, 16)[:, None], train_loop.IGNORE)
    big = {"input_ids": ids, "lang_ids": torch.ones_like(ids), "labels": labels}
    parts = [{k: v[i * 4 : (i + 1) * 4] for k, v in big.items()} for i in range(4)]
    accelerator = Accelerator(cpu=True)
    try:
        got = []
        for batches in ([big], parts):
            model.zero_grad(set_to_none=True)
            loss_sum, targets = train_loop.accumulate(accelerator, model, batches)
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            got.append((float(loss_sum / targets), int(targets), grads))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    (one, n1, g1), (four, n4, g4) = got
    assert n1 == n4 == int((labels[:, 1:] != train_loop.IGNORE).sum())
    assert one == pytest.approx(four, rel=1e-6)
    assert g1.keys() == g4.keys() and len(g1) == len(list(model.parameters()))
    for name in g1:
        assert torch.allclose(g1[name], g4[name], rtol=1e-4, atol=1e-7), name


def test_launch_commands(inputs, tmp_path):
    root, _ = inputs
    run = RunDir.of(str(root))
    one = train.plan(run, PARAMS)
    assert train.command(one, "s.json")[1:] == ["-m", "xlmflow.tasks.train.loop", "s.json"]
    cfg = tmp_path / "accelerate.yaml"
    cfg.write_text("compute_environment: LOCAL_MACHINE\nnum_machines: 2\n")
    multi = train.plan(run, PARAMS.model_copy(update={"num_processes": 4, "accelerate_config": str(cfg)}))
    cmd = train.command(multi, "s.json")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and ["--config_file", str(cfg)] == cmd[3:5]
    assert "--num_processes=4" in cmd
    with pytest.raises(ValueError, match="one process"):
        train.command(train.plan(run, PARAMS.model_copy(update={"num_processes": 2, "launcher": "python"})), "s")


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [train_loop.lr_factor(s, 10, 110, "cosine", 0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[110] == pytest.approx(0.1)
    assert train_loop.lr_factor(60, 10, 110, "linear", 0.0) == pytest.approx(0.5)


def test_training_needs_committed_shards(tmp_path):
    from xlmflow.storage import ManifestError

    with pytest.raises(ManifestError, match="run the shard stage first"):
        train.plan(RunDir.of(str(tmp_path / "empty")), PARAMS)
    assert Location.of(str(tmp_path)).exists()


@pytest.mark.parametrize(
    ("precision", "amx", "avx512_bf16", "want"),
    [
        ("auto", True, False, True),  # Intel Xeon since Sapphire Rapids
        ("auto", False, True, True),  # AMD Zen 4, Intel Cooper Lake: AVX-512 bf16 without AMX
        ("auto", False, False, False),  # bf16 would be emulated: fp32
        ("auto", None, None, False),  # torch does not say (private checks absent): fp32
        ("fp32", True, True, False),
        ("bf16", False, False, True),
    ],
)
def test_auto_precision_on_a_cpu(monkeypatch, precision, amx, avx512_bf16, want):
    """``auto`` on a CPU means bf16 exactly where the CPU has bf16 matrix units (AMX or AVX-512 bf16)."""
    import torch

    from xlmflow.tasks.common.precision import use_bf16

    for name, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    assert use_bf16(precision, gpu=False) is want
