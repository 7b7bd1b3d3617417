"""The finetune stage: translation examples (loss on the target only, a real pad token), the committed model (plain
transformers loads it), resume after a kill to the same weights, ``xlmflow translate``, and the evaluation's
fine-tuned figures beside the few-shot model's and the copy baseline's."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_pairs import paired  # noqa: F401  (the fixture: a run whose shard stage has one set's pairs)

from xlmflow.storage import Location, RunDir, read_table
from xlmflow.storage.shards import list_pairs
from xlmflow.tasks.common.specials import EOS, PAD, lang_tag
from xlmflow.tasks.finetune.data import IGNORE, TranslationExamples

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 256}  # a toy pair is ~130 (byte-like) tokens


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pretrained(paired, tmp_path_factory):  # noqa: F811
    """``paired``'s run with a tiny model trained on it (the train stage committed)."""
    from xlmflow.tasks import train

    run, tok, _ = paired
    root = tmp_path_factory.mktemp("finetune") / "run"
    shutil.copytree(run.root.path, root)
    params = train.TrainParams(model=TINY, align="none", max_steps=4, batch_size=2, eval_every=4, eval_blocks=1)
    train.train_unit(train.plan(RunDir.of(str(root)), params))
    return root, tok


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    """``pretrained``'s run with the translation model fine-tuned by :func:`_params`, never interrupted. Read it."""
    from xlmflow.tasks import finetune

    root = tmp_path_factory.mktemp("finetuned") / "run"
    shutil.copytree(pretrained[0], root)
    finetune.finetune_unit(finetune.plan(RunDir.of(str(root)), _params())[0])
    return root


def _params(**kw):
    from xlmflow.tasks.finetune.params import FinetuneParams

    # fp32: the two-process test compares weights to float rounding (bf16 products round differently per share)
    base = {"max_steps": 24, "batch_size": 4, "checkpoint_every": 4, "log_every": 4, "precision": "fp32"}
    return FinetuneParams(**(base | kw))


def test_examples_learn_the_target_only_and_pad_with_the_pad_token(paired):  # noqa: F811
    run, tok, _ = paired
    files = list_pairs(run.stage("shard"))
    langs = ["en", "fr", "zh"]
    pad, eos = tok.token_to_id(PAD), tok.token_to_id(EOS)
    ex = TranslationExamples(files, ["en-fr", "fr-en"], langs, pad, 256)
    table = read_table(Location(files[0].uri))
    # rows 2-4 are an empty side, a side in the wrong language and an untranslated copy, row 7 is held out (it
    # shares an n-gram with the eval part): no example of them
    assert ex.counts == {"en-fr": 4, "fr-en": 4} and set(ex.examples[:, 1].tolist()) == {0, 1, 5, 6}
    for i in range(len(ex.examples)):
        ids, labels, lang_ids = ex.example(i)
        _, row, a, b = ex.examples[i]
        src, tgt = table[langs[a]][int(row)].as_py(), table[langs[b]][int(row)].as_py()
        assert ids.tolist() == src + tgt and src[0] == tok.token_to_id(lang_tag(langs[a])) and src[-1] == eos
        learnt = labels != IGNORE
        assert not learnt[: len(src) + 1].any(), "the prompt and the target's tag are never targets"
        assert labels[learnt].tolist() == tgt[1:] and labels[-1] == eos, "every target token, and its end, learnt"
        assert (lang_ids[: len(src)] == a + 1).all() and (lang_ids[len(src) :] == b + 1).all()
    batch = ex.batch(seed=0, step=3, batch_size=6)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["lang_ids"].shape
    padded = batch["input_ids"] == pad
    assert padded.any() and (batch["labels"][padded] == IGNORE).all() and pad != eos
    assert all(np.array_equal(batch[k], ex.batch(0, 3, 6)[k]) for k in batch), "a batch is a function of (seed, step)"
    assert not np.array_equal(batch["input_ids"], ex.batch(0, 4, 6)["input_ids"])
    short = TranslationExamples(files, ["en-fr"], langs, pad, 135)
    assert 0 < short.counts["en-fr"] < 4, "examples longer than max_len are left out, not cut"
    with pytest.raises(ValueError, match="no usable translation pairs"):
        TranslationExamples(files, ["en-fr"], langs, pad, 8)


def test_default_directions_pair_english_with_every_other_language(pretrained):
    from xlmflow.tasks import finetune

    root, _ = pretrained
    (unit,) = finetune.plan(RunDir.of(str(root)), _params())
    assert sorted(unit.params["directions"]) == ["en-fr", "en-zh", "fr-en", "zh-en"]
    with pytest.raises(ValueError, match="no language xx"):
        finetune.plan(RunDir.of(str(root)), _params(directions=["en-xx"]))
    with pytest.raises(ValueError, match="SRC-TGT"):
        _params(directions=["english"])
    assert finetune.plan(RunDir.of(str(root)), _params(translate=False)) == []
    # no parallel sets to classify: a classify_lang the model lacks is no error (a user's corpus without English)
    assert len(finetune.plan(RunDir.of(str(root)), _params(classify_lang="ar"))) == 1


@pytest.mark.slow
def test_a_killed_fine_tune_resumes_to_the_same_weights_and_loads_with_transformers(
    pretrained, finetuned, tmp_path, caplog
):
    import transformers

    from xlmflow.tasks import finetune

    root, _ = pretrained
    runs = {"clean": finetuned, "killed": tmp_path / "killed"}
    shutil.copytree(root, runs["killed"])
    unit = finetune.plan(RunDir.of(str(runs["killed"])), _params())[0]
    assert unit.fingerprint == finetune.plan(RunDir.of(str(finetuned)), _params())[0].fingerprint
    ckpt = Path(unit.options["checkpoints"])
    ckpt.mkdir(parents=True)
    (ckpt / "spec.json").write_text(json.dumps(finetune.spec_of(unit)))
    cmd = [sys.executable, "-m", "xlmflow.tasks.finetune.loop", str(ckpt / "spec.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt / "step-0000008").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / "step-0000008").exists() and not (ckpt / "final").exists(), "killed too early or too late"
    caplog.set_level(logging.INFO, logger="xlmflow")
    finetune.finetune_unit(unit)
    assert "resumed from checkpoint step-0000008 at step 8" in caplog.text
    ours, theirs = runs["killed"] / "finetune" / "translate", runs["clean"] / "finetune" / "translate"
    assert sha(ours / "model.safetensors") == sha(theirs / "model.safetensors"), "resumed weights differ"
    assert (ours / "metrics.jsonl").read_bytes() == (theirs / "metrics.jsonl").read_bytes()
    assert sha(ours / "model.safetensors") != sha(root / "train" / "model.safetensors"), "fine-tuning changed nothing"
    assert not ckpt.exists(), "checkpoints go once the model is committed"

    # plain transformers: the model's code (trust_remote_code), its tokenizer; generation stops at EOS, pads with PAD
    model = transformers.AutoModelForCausalLM.from_pretrained(str(ours), trust_remote_code=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(ours))
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids(EOS)
    pad = model.generation_config.pad_token_id
    assert pad == tok.convert_tokens_to_ids(PAD) != model.generation_config.eos_token_id


def test_two_processes_fine_tune_to_the_weights_of_one(pretrained, finetuned, tmp_path, caplog):
    """``num_processes = 2`` (torchrun, CPU): each process takes its half of every batch and the gradients are those
    of the whole batch, so the weights match the one-process fine-tune's (to float rounding)."""
    from safetensors.numpy import load_file

    from xlmflow.tasks import finetune

    run = tmp_path / "run"
    shutil.copytree(pretrained[0], run)
    (unit,) = finetune.plan(RunDir.of(str(run)), _params(num_processes=2))
    assert unit.params["num_processes"] == 2
    caplog.set_level(logging.INFO, logger="xlmflow")
    ref = finetune.finetune_unit(unit)
    assert "torch.distributed.run" in caplog.text and "--nproc_per_node=2" in caplog.text
    two = load_file(str(Path(ref.uri) / "model.safetensors"))
    one = load_file(str(finetuned / "finetune" / "translate" / "model.safetensors"))
    before = load_file(str(pretrained[0] / "train" / "model.safetensors"))
    assert two.keys() == one.keys()
    moved = max(float(np.abs(one[k] - before[k]).max()) for k in one if k in before)
    apart = max(float(np.abs(one[k] - two[k]).max()) for k in one)
    assert moved > 1e-3 and apart < 1e-5, (moved, apart)
    with pytest.raises(ValueError, match="batch_size 4 does not divide among num_processes 3"):
        _params(num_processes=3)


def test_translate_writes_one_line_per_line_and_errors_name_the_problem(finetuned, tmp_path, capsys):
    from xlmflow.flows.cli import main

    run = finetuned
    lines = tmp_path / "lines.txt"
    lines.write_text("Open the settings dialog.\n\nThe firewall blocks every connection.\n", encoding="utf-8")
    assert main(["translate", "--run-dir", str(run), "--src", "en", "--tgt", "fr", str(lines)]) == 0
    out = capsys.readouterr().out.split("\n")
    assert len(out) == 4 and out[1] == "" and out[3] == "", "three lines in, three out (the empty one empty)"
    assert main(["translate", "--run-dir", str(run), "--src", "en", "--tgt", "de", str(lines)]) == 1
    assert "unknown target language 'de': this model knows en, fr, zh" in capsys.readouterr().err
    assert main(["translate", "--model", str(run / "shard"), "--src", "en", "--tgt", "fr", str(lines)]) == 1
    assert "no config.json, so not a model folder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run / "finetune" / "translate", bare)
    (bare / "tokenizer.json").unlink()
    assert main(["translate", "--model", str(bare), "--src", "en", "--tgt", "fr", str(lines)]) == 1
    assert "no tokenizer.json beside the model" in capsys.readouterr().err


def test_the_report_puts_the_fine_tuned_model_beside_few_shot_and_copy():
    from xlmflow.tasks.evaluate import report, report_md

    def scores(chrf, copy):
        return {
            "chrf": chrf,
            "bleu": 1.0,
            "n": 3,
            "rouge_l": 0.1,
            "ci": {"chrf": [chrf - 1, chrf + 1]},
            "copy_baseline": {"chrf": copy, "bleu": 2.0, "rouge_l": 0.2},
        }

    lm = {
        "model": "model",
        "bits_per_byte": {"fr": 2.0},
        "token_perplexity": {},
        "generation_language_rate": {},
        "generations": {},
    }
    few = {
        "model": "model",
        "set": "toy",
        "retrieval": {},
        "contamination": {},
        "chrf": {"en-fr": 4.0},
        "bleu": {"en-fr": 0.5},
        "translation": {"en-fr": scores(4.0, 25.0)},
        "translation_examples": {},
        "prompt_format": "f",
    }
    translation = {"translation": {"en-fr": scores(9.5, 25.0)}, "examples": {}, "prompt_format": "p"}
    classification = {
        "trained_on": "en",
        "classes": ["a", "b"],
        "majority_class": "a",
        "per_language": {"fr": {"accuracy": 0.75, "majority": 0.5, "n": 4}},
    }
    few["transfer"] = {"accuracy": {"fr": 0.625}, "majority_baseline": {"fr": 0.5}}
    tuned = {
        "model": "finetune",
        "tuned_from": "model",
        "set": "toy",
        "finetuned": {"translation": translation, "classification": classification},
    }
    merged = report.merge([tuned, lm, few], {})
    assert list(merged["models"]) == ["model"], "the fine-tuned models are figures of the model they were tuned from"
    assert merged["finetuned"]["toy"]["translation"]["translation"]["en-fr"]["chrf"] == 9.5
    text = "\n".join(report_md._finetuned_section(merged["models"]["model"]))
    assert "| en-fr | 3 | 9.5 [8.5, 10.5] | 4.0 | 25.0 |" in text, text
    assert "| fr | 4 | 0.750 | 0.500 | 0.625 |" in text, text


def test_the_classifier_reads_each_rows_last_real_token_and_starts_from_the_language_model(pretrained):
    import torch
    import transformers

    from xlmflow.tasks.common.model import XlmGPT2ForSequenceClassification, register

    root, tok = pretrained
    register()
    clf = XlmGPT2ForSequenceClassification.from_pretrained(str(root / "train"), num_labels=3).eval()
    lm = transformers.AutoModelForCausalLM.from_pretrained(str(root / "train"))
    for (name, a), b in zip(clf.transformer.state_dict().items(), lm.transformer.state_dict().values()):
        assert torch.equal(a, b), f"transformer.{name} is not the pretrained one"
    assert torch.equal(clf.lang_embeddings.weight, lm.lang_embeddings.weight)
    pad = tok.token_to_id(PAD)
    row = [tok.token_to_id(lang_tag("fr")), *tok.encode("Le pare-feu bloque").ids, tok.token_to_id(EOS)]
    with torch.no_grad():
        alone = clf(input_ids=torch.tensor([row])).logits
        right = clf(input_ids=torch.tensor([row + [pad] * 5])).logits
        mask = torch.tensor([[0] * 5 + [1] * len(row)])
        left = clf(
            input_ids=torch.tensor([[pad] * 5 + row]), attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(0)
        ).logits
    assert torch.allclose(alone, right, atol=1e-5) and torch.allclose(alone, left, atol=1e-5)


@pytest.mark.slow
def test_a_classifier_trained_on_english_is_tested_on_every_language(pretrained, tmp_path, monkeypatch, capsys):
    import polars as pl
    import transformers
    from test_pairs import EN, FR, ZH

    from xlmflow.tasks import finetune
    from xlmflow.tasks.common.runtime import Input, Unit
    from xlmflow.tasks.evaluate import finetuned as ft

    root, _ = pretrained
    run = tmp_path / "run"
    shutil.copytree(root, run)
    sets = tmp_path / "sets"
    sets.mkdir()
    ids = [f"text/{'net' if i % 2 else 'doc'}/{i}.xhp" for i in range(len(EN))]  # two classes, from the ids
    table = pl.DataFrame({"id": ids, "en": EN, "fr": FR, "zh": ZH})
    table.write_csv(sets / "lab.train.tsv", separator="\t")  # a folder's parts may be TSV as well as Parquet
    table.write_parquet(sets / "lab.eval.parquet")
    from xlmflow.tasks.common.parallel_sets import parallel_files, set_name

    assert [(split, set_name(loc)) for split, loc in parallel_files(str(sets))] == [("eval", "lab"), ("train", "lab")]
    params = _params(translate=False, parallel=[str(sets)], classify_steps=6, classify_min_rows=2)
    (unit,) = finetune.plan(RunDir.of(str(run)), params)
    with pytest.raises(ValueError, match="classify_lang 'ar' is not a language of the model"):
        finetune.plan(RunDir.of(str(run)), params.model_copy(update={"classify_lang": "ar"}))
    assert unit.name == "classify-lab" and unit.params["lang"] == "en"
    ref = finetune.finetune_unit(unit)
    folder = Path(ref.uri)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["examples"] == {"doc": 4, "net": 4} and summary["lang"] == "en"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True)
    assert model.config.id2label == {0: "doc", 1: "net"}
    from xlmflow.flows.cli import main

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(FR[:2]) + "\n\n", encoding="utf-8")
    assert main(["classify", "--run-dir", str(run), "--lang", "fr", str(lines)]) == 0  # the run's one classifier
    out = capsys.readouterr().out.split("\n")
    assert len(out) == 4 and set(out[:2]) <= {"doc", "net"} and out[2] == "", out
    assert main(["classify", "--model", str(run / "train"), "--lang", "fr", str(lines)]) == 1
    assert "not a classifier" in capsys.readouterr().err

    # the eval part's rows, each side taken as in its language (the LID model's judgement is tested elsewhere)
    monkeypatch.setattr(ft, "detected", lambda model, texts, lang: np.array([bool(t) for t in texts]))
    got = ft._classification(
        Unit("evaluate", "x", "", "", options={"batch_size": 4}), Input(ref.uri, ref.fingerprint), table, None
    )
    assert set(got["per_language"]) == {"en", "fr", "zh"} and got["trained_on"] == "en"
    fr = got["per_language"]["fr"]  # row 2's French side is empty: 7 rows, 3 of the majority class (doc)
    assert fr["n"] == 7 and fr["majority"] == pytest.approx(3 / 7) and 0 <= fr["accuracy"] <= 1, fr
    assert got["majority_class"] == "doc"
    # the stage committed with the classifier, then without it (classify off): its folder goes, nothing stale stays
    finetune.commit_stage(finetune.stage_for(RunDir.of(str(run)), params, [ref]), [ref])
    assert folder.exists()
    off = params.model_copy(update={"classify": False})
    finetune.commit_stage(finetune.stage_for(RunDir.of(str(run)), off, []), [])
    assert not folder.exists() and (run / "finetune" / "_manifest.json").exists()


def test_a_labelled_table_gives_a_classifier_tested_on_every_languages_eval_rows(pretrained, tmp_path, monkeypatch):
    """A user's ``text, label, lang, split`` table: a classifier trained on its English train rows, its eval rows of
    every language kept beside the model, and the evaluate stage's unit for it reporting accuracy per language
    beside the majority class."""
    import polars as pl
    from test_pairs import EN, FR, ZH

    from xlmflow.tasks import finetune
    from xlmflow.tasks.common.labelled_sets import EVAL_ROWS
    from xlmflow.tasks.common.runtime import Unit, commit_stage
    from xlmflow.tasks.evaluate import _finetuned_units
    from xlmflow.tasks.evaluate import finetuned as ft
    from xlmflow.tasks.evaluate.params import EvalParams

    root, _ = pretrained
    run = tmp_path / "run"
    shutil.copytree(root, run)
    labels = ["net" if i % 2 else "doc" for i in range(len(EN))]
    rows = [
        {"text": t, "label": c, "lang": lang, "split": split}
        for lang, texts, split in (("en", EN, "train"), ("en", EN[:4], "eval"), ("fr", FR, "eval"), ("zh", ZH, "eval"))
        for t, c in zip(texts, labels)
    ]
    pl.DataFrame(rows).write_csv(tmp_path / "topics.tsv", separator="\t", quote_style="never")
    params = _params(translate=False, labelled=[str(tmp_path / "topics.tsv")], classify_steps=6, classify_min_rows=2)
    (unit,) = finetune.plan(RunDir.of(str(run)), params)
    assert unit.name == "classify-topics" and unit.params["labelled"] and unit.params["lang"] == "en"
    ref = finetune.finetune_unit(unit)
    summary = json.loads((Path(ref.uri) / "summary.json").read_text())
    assert summary["examples"] == {"doc": 4, "net": 4}  # English train rows only
    held = pl.read_parquet(Path(ref.uri) / EVAL_ROWS)
    assert held.height == 4 + len(FR) - 1 + len(ZH) and set(held["lang"]) == {"en", "fr", "zh"}  # FR[2] is empty
    commit_stage(finetune.stage_for(RunDir.of(str(run)), params, [ref]), [ref])

    (evaluation,) = _finetuned_units(RunDir.of(str(run)), EvalParams(), {}, {"max_segments": 100}, {}, "code")
    assert evaluation.params["labelled"] and evaluation.name == "finetune--topics" and "set" not in evaluation.inputs
    monkeypatch.setattr(ft, "detected", lambda model, texts, lang: np.array([bool(t) for t in texts]))
    (model_in,) = evaluation.inputs["finetuned"].values()
    got = ft._labelled_classification(
        Unit("evaluate", "x", "", "", {"max_segments": 100}, options={"batch_size": 4}), model_in, None
    )
    assert set(got["per_language"]) == {"en", "fr", "zh"} and got["trained_on"] == "en"
    assert got["per_language"]["en"]["n"] == 4 and got["per_language"]["fr"]["n"] == len(FR) - 1
    assert got["per_language"]["zh"]["majority"] == pytest.approx(labels.count(got["majority_class"]) / len(ZH))


def test_a_labelled_table_is_split_by_text_and_its_errors_name_the_row(tmp_path):
    import polars as pl

    from xlmflow.tasks.common.labelled_sets import read_labelled
    from xlmflow.tasks.common.parallel_sets import parallel_files

    texts = [f"document number {i} about a topic" for i in range(400)]
    table = pl.DataFrame({"text": texts, "label": ["a", "b"] * 200, "lang": ["en"] * 400, "extra": ["x"] * 400})
    table.write_parquet(tmp_path / "t.parquet")
    df = read_labelled(Location.of(str(tmp_path / "t.parquet")))
    held = df.filter(pl.col("split") == "eval")["text"].to_list()
    assert 40 < len(held) < 120 and df.columns == ["text", "label", "lang", "split"]
    table.reverse().write_parquet(tmp_path / "r.parquet")  # the split follows the text, not the row order
    assert sorted(
        read_labelled(Location.of(str(tmp_path / "r.parquet"))).filter(pl.col("split") == "eval")["text"]
    ) == sorted(held)
    for bad, message in (
        (table.drop("lang"), "no lang column"),
        (table.with_columns(pl.lit("english").alias("lang")), "row 1: 'english' is not a language code"),
        (table.with_columns(pl.lit("test").alias("split")), "row 1 has split 'test'; use train or eval"),
        (
            table.with_columns(pl.when(pl.int_range(400) == 7).then(None).otherwise(pl.col("label")).alias("label")),
            "row 8 has no label",
        ),
    ):
        bad.write_parquet(tmp_path / "bad.parquet")
        with pytest.raises(ValueError, match=message):
            read_labelled(Location.of(str(tmp_path / "bad.parquet")))
    # a lone file named NAME.train.tsv is a train part (a user's translation pairs), any other file an eval set
    pl.DataFrame({"en": ["a"], "fr": ["b"]}).write_csv(tmp_path / "mine.train.tsv", separator="\t")
    assert parallel_files([str(tmp_path / "mine.train.tsv"), str(tmp_path / "t.parquet")]) == [
        ("train", Location.of(str(tmp_path / "mine.train.tsv"))),
        ("eval", Location.of(str(tmp_path / "t.parquet"))),
    ]
