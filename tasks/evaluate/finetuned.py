"""The fine-tuned unit, one per parallel set, for the finetune stage's models:

* translation: the translation model from English on the rows the pretrained model's few-shot translation is scored
  on (:func:`.sets.test_rows`), prompted as it was tuned (no examples), scored by :func:`.scores.translation_scores`
  beside copying the source;
* classification, zero-shot across languages (the XNLI protocol): the set's classifier, trained on one language's
  rows of the train part, tested on every language of the eval part (rows of its classes, the side not empty and in
  its language: the transfer probe's rows) beside the majority class of its training rows; for a labelled set
  (:mod:`..common.labelled_sets`), on the eval rows of every language that the classifier's folder holds.

The report puts these beside the model they were tuned from: its few-shot translation and its frozen-feature
probe."""

from __future__ import annotations

import json
import threading

import numpy as np
import polars as pl

from xlmflow.storage import Aside, Location, read_table
from xlmflow.tasks.common.labelled_sets import EVAL_ROWS
from xlmflow.tasks.common.parallel_sets import PIVOT, id_class, languages, read_set
from xlmflow.tasks.common.runtime import Ref, Unit, ensure, logger
from xlmflow.tasks.common.specials import lang_tag
from xlmflow.tasks.evaluate.sets import test_rows
from xlmflow.tasks.evaluate.units import detected, load_model, spread, write_metrics
from xlmflow.tasks.finetune.inference import classify, load
from xlmflow.tasks.langid import lid

FINETUNED = "finetuned"  # the key of a unit's figures in its metrics.json
TRANSLATE, CLASSIFY = "finetune/translate", "finetune/classify"  # the unit's "finetuned" inputs: model -> role
_lock = threading.Lock()


def finetuned_unit(unit: Unit) -> Ref:
    """Translation (per pair ``en-xx``) and zero-shot classification (per language) on one set's eval part; for a
    labelled set, classification on the eval rows its classifier's folder holds."""
    p, name = unit.params, unit.params["set"]
    models = dict(unit.each("finetuned"))

    def build(aside: Aside) -> dict:
        lid_model = lid.load_model(unit.input("lid").uri)
        out: dict = {}
        if p.get("labelled"):
            (classifier,) = models.values()
            out["classification"] = _labelled_classification(unit, classifier, lid_model)
        else:
            df = spread(read_set(Location(unit.inputs["set"]["eval"].uri)), p["max_segments"])  # the set unit's rows
            if TRANSLATE in models:
                out["translation"] = _translation(unit, models[TRANSLATE], df, lid_model)
            classifier = next((m for label, m in models.items() if label.startswith(CLASSIFY)), None)
            if classifier is not None:
                out["classification"] = _classification(unit, classifier, df, lid_model)
        write_metrics(aside, {"model": "finetune", "tuned_from": p["tuned_from"], "set": name, FINETUNED: out})
        return {"pairs": len(out.get("translation", {}).get("translation", {}))}

    return ensure(unit, build)


def _translation(unit: Unit, model_in, df, lid_model) -> dict:
    from xlmflow.tasks.common.generation import translate
    from xlmflow.tasks.evaluate import scores

    p, batch = unit.params, unit.options["batch_size"]
    model, tok = load_model(model_in.uri, model_in.fingerprint)
    langs = [x for x in model.config.langs if x in languages(df)]
    texts = {x: df[x].to_list() for x in langs}
    ok = {x: detected(lid_model, texts[x], x) for x in langs}
    pairs, examples, fmt = {}, {}, None
    for tgt in [x for x in langs if x != PIVOT] if PIVOT in langs else []:
        rows = test_rows(texts, ok, tgt, p, "train" in unit.inputs["set"])
        if not rows:
            continue
        sources, refs = [texts[PIVOT][i] for i in rows], [texts[tgt][i] for i in rows]
        new = min(64, model.config.n_positions // 4)
        hyps, fmt = translate(model, tok, [], sources, PIVOT, tgt, new, batch)
        fmt = fmt.replace(lang_tag(tgt), lang_tag("xx"))  # the same prompt into every language
        pairs[f"{PIVOT}-{tgt}"] = scores.translation_scores(hyps, refs, sources, tgt, seed=p["seed"])
        examples[f"{PIVOT}-{tgt}"] = [
            {"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, refs, hyps))[:3]
        ]
        logger().info("evaluate finetune %s %s-%s: chrF++ %.1f", p["set"], PIVOT, tgt, pairs[f"{PIVOT}-{tgt}"]["chrf"])
    return {"translation": pairs, "examples": examples, "prompt_format": fmt}


def _classification(unit: Unit, model_in, df, lid_model) -> dict:
    """A parallel set: each language's side of the eval rows, the class from the row's id."""
    classes = [id_class(str(i)) for i in df["id"].to_list()] if "id" in df.columns else []
    tests = {lang: (df[lang].to_list(), classes) for lang in languages(df)} if classes else {}
    return _accuracies(unit, model_in, tests, lid_model)


def _labelled_classification(unit: Unit, model_in, lid_model) -> dict:
    """A labelled set: the eval rows its classifier's folder holds, at most ``max_segments`` per language."""
    rows = pl.from_arrow(read_table(Location(model_in.uri).child(EVAL_ROWS)))
    tests = {}
    for lang in sorted(set(rows["lang"].to_list())):
        part = spread(rows.filter(pl.col("lang") == lang), unit.params["max_segments"])
        tests[lang] = (part["text"].to_list(), part["class"].to_list())
    return _accuracies(unit, model_in, tests, lid_model)


def _accuracies(unit: Unit, model_in, tests: dict[str, tuple[list, list]], lid_model) -> dict:
    """Accuracy per language of the classifier beside its training rows' majority class, on ``tests`` (language ->
    texts, classes): the rows of its classes whose text is there and in its language."""
    model, tok = load_classifier(model_in.uri)
    with Location(model_in.uri).child("summary.json").open("rb") as f:
        trained = json.loads(f.read())
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    majority = max(trained["examples"], key=trained["examples"].get)
    per_lang = {}
    for lang in [x for x in model.config.langs if x in tests]:
        texts, classes = tests[lang]
        keep = np.array([bool(t) and c in names for t, c in zip(texts, classes)]) & detected(lid_model, texts, lang)
        rows = np.flatnonzero(keep)
        if not len(rows):
            continue
        truth = [classes[i] for i in rows]
        guess = classify(model, tok, [texts[i] for i in rows], lang, unit.options["batch_size"])
        per_lang[lang] = {
            "accuracy": float(np.mean([g == t for g, t in zip(guess, truth)])),
            "majority": float(np.mean([t == majority for t in truth])),
            "n": len(rows),
        }
    return {
        "trained_on": trained.get("lang", PIVOT),
        "classes": names,
        "majority_class": majority,
        "per_language": per_lang,
    }


def load_classifier(uri: str):
    """(classifier, tokenizer) of a fine-tuned classifier folder (locked: units run on threads, and transformers
    builds models through process-wide state)."""
    with _lock:
        return load(uri, classifier=True)
