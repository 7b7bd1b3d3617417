"""Evaluation: how good the cross-lingual model is, per language and across languages, each figure beside a
baseline it must beat.

Units, each cached like every stage's:

* ``lm/<model>/``: bits per byte, bits per character and token perplexity per language on the valid
  shards' text, re-tokenised by each model's own tokenizer (so models with different vocabularies compare),
  beside a per-language unigram model of the train shards (:func:`.measures.unigram_baseline`: a model above
  it has learnt less than token frequencies); and generation per language (greedy and sampled continuations of
  valid-split prompts, with the share the langid model detects as the prompted language, degenerate texts
  counted as misses).
* ``sets/<model>--<set>/``: one per model and parallel set: cross-lingual retrieval (:mod:`.retrieval`:
  mean-pooled hidden states of every layer, acc@1 both ways per language pair at the layer, raw or centred,
  chosen on the set's train part, else fixed in advance; beside chance and two lexical baselines, a bag of
  token ids and char 3-gram TF-IDF; rows whose two sides are empty, identical or not in their column's language
  are dropped and counted), the transfer probe (a logistic regression on English features of the set's train
  part at retrieval's layer, tested zero-shot on every language of its eval part; classes from the segment
  ``id``), few-shot translation from English scored with chrF++, BLEU and ROUGE with bootstrap confidence
  intervals, beside a copy-the-source baseline (:mod:`.scores`), and contamination (:mod:`.contamination`: the
  share of segments sharing an ``ngram``-token n-gram with the train shards, out of the segments of at least
  ``ngram`` tokens; shorter ones are counted apart).

Adding a parallel set runs only that set's units; a new model runs all of its units. The stage
commit merges them into ``metrics.json``, ``report.md`` and PNG plots (:mod:`.report`, :mod:`.report_md`,
:mod:`.plots`). The language-model unit and what both units share are in :mod:`.units`, the set unit in
:mod:`.sets`; the measures are plain functions in :mod:`.measures` (bits per byte, generation, translation),
:mod:`.embeddings` (hidden states: retrieval, centring, the probe), :mod:`.lexical` (retrieval's baselines) and
:mod:`.scores` (ROUGE, bootstrap intervals, degenerate text); the parameters are in :mod:`.params`, the UI
report in :mod:`.ui`.
"""

from __future__ import annotations

import json
from typing import Any

from xlmflow.storage import (
    Aside,
    Location,
    RunDir,
    code_version,
    file_sha256,
    load_output,
    read_manifest,
    tree_sha256,
)
from xlmflow.storage.increments import EVALUATION, versions
from xlmflow.tasks.common.labelled_sets import EVAL_ROWS
from xlmflow.tasks.common.parallel_sets import parallel_files, read_set, set_name
from xlmflow.tasks.common.runtime import Input, Ref, Unit, commit_stage, plain_step, stage_unit, step
from xlmflow.tasks.common.specials import TOKENIZER_FILE
from xlmflow.tasks.evaluate import nights
from xlmflow.tasks.evaluate import report as eval_report
from xlmflow.tasks.evaluate.finetuned import finetuned_unit
from xlmflow.tasks.evaluate.params import EvalParams
from xlmflow.tasks.evaluate.sets import set_unit
from xlmflow.tasks.evaluate.units import _load_model as _load_model  # re-exported: its cache, as before
from xlmflow.tasks.evaluate.units import lid_model_path, lm_unit, read_metrics, tokenizer_problem, write_metrics
from xlmflow.tasks.langid import lid

STAGE = "evaluate"
VOCAB, SHARD, TRAIN, FINETUNE = "vocab", "shard", "train", "finetune"
READS = (VOCAB, SHARD, TRAIN, FINETUNE)  # the stages whose committed output it reads (finetune: when it has a model)
TRANSLATE_ROLE, CLASSIFY_ROLE = "finetune/translate", "finetune/classify"  # the finetune stage's models


# ---------------------------------------------------------------- models
def models_of(run: RunDir, params: EvalParams) -> list[tuple[str, Input]]:
    """(label, model input) for every model: the run's train stage by default, labelled ``model`` ("train" read
    like the train split; the run folder's name would make the bytes and the key depend on where the run lies);
    given ones by run and stage (``demo/train``) or by folder. A model folder whose tokenizer cannot be its
    model's (:func:`~.units.tokenizer_problem`) is an error now, naming it."""
    if not params.models:
        m = load_output(run.stage(TRAIN), TRAIN)
        _check_tokenizer(run.stage(TRAIN), "train")
        return [("model", Input(run.stage(TRAIN).uri, m.fingerprint))]
    found, labels = [], set()
    for path in params.models:
        loc = Location.of(path)
        if loc.child(TRAIN, TOKENIZER_FILE).exists():  # a run directory
            loc = loc.child(TRAIN)
        if not loc.child("config.json").exists() or not loc.child(TOKENIZER_FILE).exists():
            raise ValueError(
                f"model {path!r}: not a model folder (no config.json and {TOKENIZER_FILE}); give a run "
                f"directory or its train folder"
            )
        _check_tokenizer(loc, path)
        m = read_manifest(loc)
        fp = m.fingerprint if m is not None else tree_sha256(loc.fs, loc.path)
        label = f"{loc.parent.name}/{TRAIN}" if loc.name == TRAIN else loc.name
        while label in labels:
            label += "+"
        labels.add(label)
        found.append((label, Input(loc.uri, fp)))
    return found


def _check_tokenizer(loc: Location, name: str) -> None:
    from tokenizers import Tokenizer

    with loc.child("config.json").open("rb") as f:
        config = json.loads(f.read())
    with loc.child(TOKENIZER_FILE).open("rb") as f:
        tok = Tokenizer.from_str(f.read().decode("utf-8"))
    if problem := tokenizer_problem(config, tok):
        raise ValueError(f"model {name!r}: {problem}")


def run_tokenizer_input(run: RunDir, shard_tokenizer: str | None) -> dict[str, Input]:
    """The vocab stage's tokenizer file, which decodes the valid shards back to text (every model's bits per
    byte re-tokenises that text); it must be the one the shards were encoded with."""
    entry = load_output(run.stage(VOCAB), VOCAB).file(TOKENIZER_FILE)
    if shard_tokenizer is not None and shard_tokenizer != entry.sha256:
        raise ValueError(f"{run.stage(SHARD)}: encoded with another tokenizer than the vocab stage's; rerun shard")
    return {TOKENIZER_FILE: Input(run.stage(VOCAB).child(TOKENIZER_FILE).uri, entry.sha256)}


# ---------------------------------------------------------------- planning
def plan(run: RunDir, params: EvalParams) -> tuple[list[Unit], list[Unit], list[Unit]]:
    """(lm units: one per model, set units: one per model and parallel set, fine-tuned units: one per parallel set
    when the run's finetune stage holds a translation model and no other models are given)."""
    shard = load_output(run.stage(SHARD), SHARD)
    shard_in = {"stage": Input(run.stage(SHARD).uri, shard.fingerprint)}
    vocab_in = run_tokenizer_input(run, shard.stats.get("tokenizer_sha256"))
    path = lid_model_path(run)  # the model the langid stage used
    lid_in = {Location(path).name: Input(path, lid.model_fingerprint(path))}
    code = code_version(__name__)
    sets: dict[str, dict[str, Input]] = {}
    for split, loc in parallel_files(params.parallel):
        read_set(loc, min_rows=2)  # a malformed file is an error now, naming it, not in the middle of a task
        sets.setdefault(set_name(loc), {})[split] = Input(loc.uri, file_sha256(loc.fs, loc.path)[0])
    lm_params = params.model_dump(include={"max_docs", "prompts", "prompt_tokens", "gen_tokens", "seed"})
    set_params = params.model_dump(
        include={
            "max_segments",
            "probe_rows",
            "probe_min_class_rows",
            "translate_segments",
            "translate_shots",
            "ngram",
            "seed",
        }
    )
    lms, per_set = [], []
    for label, model in models_of(run, params):
        inputs = {"model": {label: model}, "shard": shard_in, "lid": lid_in, "vocab": vocab_in}
        key = label.replace("/", "--")  # a unit's folder and task name
        lms.append(
            Unit(
                stage=STAGE,
                name=key,
                out=run.unit(STAGE, key, group="lm").uri,
                code_version=code,
                params=lm_params,
                inputs=inputs,
                options={"batch_size": params.batch_size},
            )
        )
        for name, parts in sorted(sets.items()):
            if "eval" not in parts:
                continue
            unit_name = f"{key}--{name}"
            per_set.append(
                Unit(
                    stage=STAGE,
                    name=unit_name,
                    out=run.unit(STAGE, unit_name, group="sets").uri,
                    code_version=code,
                    params=set_params | {"set": name},
                    inputs={**inputs, "set": parts},
                    options={"batch_size": params.batch_size},
                )
            )
    finetuned = _finetuned_units(run, params, sets, set_params, lid_in, code) if not params.models else []
    return lms, per_set, finetuned


def _finetuned_units(
    run: RunDir, params: EvalParams, sets: dict[str, dict[str, Input]], set_params: dict, lid_in: dict, code: str
) -> list[Unit]:
    """One per parallel set with an eval part and a fine-tuned model to test on it (the translation model, the
    set's classifier), and one per labelled set's classifier (tested on the eval rows its folder holds)."""

    def unit(name: str, inputs: dict, **extra) -> Unit:
        return Unit(
            stage=STAGE,
            name=f"{FINETUNE}--{name}",
            out=run.unit(STAGE, f"{FINETUNE}--{name}", group="finetuned").uri,
            code_version=code,
            params=set_params | {"set": name, "tuned_from": "model"} | extra,
            inputs=inputs | {"lid": lid_in},
            options={"batch_size": params.batch_size},
        )

    tuned = _finetuned_models(run)
    finetuned = []
    for name, parts in sorted(sets.items()):
        models = {k: v for k, v in tuned.items() if k in (TRANSLATE_ROLE, f"{CLASSIFY_ROLE}-{name}")}
        if "eval" in parts and models:
            finetuned.append(unit(name, {"finetuned": models, "set": parts}))
    for role, model in tuned.items():
        name = role.removeprefix(f"{CLASSIFY_ROLE}-")
        if role.startswith(CLASSIFY_ROLE) and name not in sets and Location(model.uri).child(EVAL_ROWS).exists():
            finetuned.append(unit(name, {"finetuned": {role: model}}, labelled=True))
    return finetuned


def _finetuned_models(run: RunDir) -> dict[str, Input]:
    """The finetune stage's committed models by role (``finetune/translate``, ``finetune/classify-<set>``); none
    when the stage is not committed."""
    stage = run.stage(FINETUNE)
    m = read_manifest(stage)
    found = {}
    for name in sorted({f.path.split("/")[0] for f in m.files if "/" in f.path}) if m is not None else ():
        found[f"{FINETUNE}/{name}"] = Input(stage.child(name).uri, load_output(stage.child(name), FINETUNE).fingerprint)
    return found


# ---------------------------------------------------------------- the stage
def stage_for(run: RunDir, params: EvalParams, refs: list[Ref]) -> Unit:
    """The stage commit: its units, plus the vocabulary's report (tokenizer figures) and the training
    metrics (loss curves) when they exist."""
    inputs = {}
    vocab = load_output(run.stage(VOCAB), VOCAB)
    if any(f.path == "report.json" for f in vocab.files):
        report = vocab.file("report.json")
        inputs["vocab_report"] = {report.path: Input(run.stage(VOCAB).child(report.path).uri, report.sha256)}
    train = read_manifest(run.stage(TRAIN))
    if train is not None:
        inputs["train"] = {"stage": Input(run.stage(TRAIN).uri, train.fingerprint)}
        kept = [v for v in versions(run, TRAIN) if v.fingerprint != train.fingerprint]
        if kept and kept[-1].loc.child(EVALUATION).exists():  # the model before this one, and its evaluation
            prev = kept[-1].loc.child(EVALUATION)
            inputs["previous"] = {kept[-1].name: Input(prev.uri, file_sha256(prev.fs, prev.path)[0])}
    settings = params.model_dump(mode="json", exclude={"models", "parallel", "batch_size"})  # what `status` compares
    return stage_unit(run.stage(STAGE).uri, STAGE, refs, code_version(__name__), settings, inputs=inputs)


def commit_evaluation(unit: Unit, refs: list[Ref]) -> Ref:
    """metrics.json (every model's numbers, the first model's also at the top), report.md and the plots."""

    def build(aside: Aside) -> dict[str, Any]:
        parts = [read_metrics(r.uri) for r in refs]
        vocab_report = {}
        if "vocab_report" in unit.inputs:
            with Location(unit.input("vocab_report").uri).open("rb") as f:
                vocab_report = json.loads(f.read())
        train_rows = []
        if "train" in unit.inputs:
            with Location(unit.input("train").uri).child("metrics.jsonl").open("rb") as f:
                train_rows = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        metrics = eval_report.merge(parts, vocab_report)
        for version, prev in unit.each("previous"):
            with Location(prev.uri).open("rb") as f:
                metrics["previous_model"] = nights.compare(json.loads(f.read()), metrics, version)
        write_metrics(aside, metrics)
        eval_report.write(aside, metrics, train_rows)
        return {"models": sorted(metrics["models"]), "languages": len(metrics["bits_per_byte"])}

    return commit_stage(unit, refs, build)


# ---------------------------------------------------------------- Prefect tasks

plan_task = plain_step("evaluate-plan")(plan)
lm_task = step(name="evaluate-lm")(lm_unit)
set_task = step(name="evaluate-set")(set_unit)
finetuned_task = step(name="evaluate-finetuned")(finetuned_unit)
commit_task = step(name="evaluate-commit")(commit_evaluation)
