"""The parallel-set unit, one per model and parallel set: translation retrieval (:mod:`.retrieval`), the transfer
probe on the layer retrieval chose, few-shot translation from English, and contamination (:mod:`.contamination`),
into the unit's ``metrics.json``."""

from __future__ import annotations

import numpy as np
import polars as pl

from xlmflow.storage import Aside, Location
from xlmflow.tasks.common.parallel_sets import PIVOT, id_class, labelled_rows, languages, read_set
from xlmflow.tasks.common.runtime import Ref, Unit, ensure
from xlmflow.tasks.common.specials import lang_tag
from xlmflow.tasks.evaluate.contamination import count_contamination
from xlmflow.tasks.evaluate.retrieval import fit_side, score_retrieval
from xlmflow.tasks.evaluate.units import detected, load_model, run_tokenizer, spread, write_metrics
from xlmflow.tasks.langid import lid


def set_unit(unit: Unit) -> Ref:
    """Retrieval, transfer probe, translation and contamination of one model on one parallel set."""
    from xlmflow.tasks.evaluate import embeddings

    ((label, model_in),) = unit.each("model")
    p, batch, name = unit.params, unit.options["batch_size"], unit.params["set"]
    eval_loc = Location(unit.inputs["set"]["eval"].uri)

    def build(aside: Aside) -> dict:
        model, tok = load_model(model_in.uri, model_in.fingerprint)
        lid_model = lid.load_model(unit.input("lid").uri)
        df = spread(read_set(eval_loc), p["max_segments"])
        langs = [lang for lang in model.config.langs if lang in languages(df)]
        if len(langs) < 2:
            raise ValueError(
                f"parallel set {eval_loc}: shares {len(langs)} language(s) with model {label} "
                f"({', '.join(model.config.langs)}); a set needs at least two of them"
            )
        index = {lang: model.config.langs.index(lang) + 1 for lang in langs}
        tags = {lang: tok.token_to_id(lang_tag(lang)) for lang in langs}
        texts = {lang: df[lang].to_list() for lang in langs}
        ok = {lang: detected(lid_model, texts[lang], lang) for lang in langs}

        def embed(columns: dict[str, list]) -> dict[str, np.ndarray]:
            return {
                lang: embeddings.embed(model, tok, [t or "" for t in column], tags[lang], index[lang], batch)
                for lang, column in columns.items()
            }

        emb = embed(texts)
        vocab_in = unit.input("vocab")
        run_tok = run_tokenizer(vocab_in.uri, vocab_in.fingerprint)  # encoded the shards (the model may not share it)
        fit = fit_side(unit, run_tok, lid_model, langs, embed)
        retrieval = score_retrieval(tok, texts, ok, emb, fit, model.config.n_layer)
        out = {"model": label, "set": name, "languages": langs, "retrieval": retrieval}
        if "train" in unit.inputs["set"] and "id" in df.columns and retrieval["layer"] is not None:
            choice = (retrieval["layer"], retrieval["centred"])
            out["transfer"] = _probe(model, tok, unit, df, texts, emb, choice, fit["means"], tags, index, ok)
        if PIVOT in langs:
            out |= _translate(model, tok, unit, df, texts, ok, langs)
        out["contamination"] = count_contamination(
            run_tok, unit.input("shard").uri, unit.input("shard").fingerprint, texts, p["ngram"]
        )
        write_metrics(aside, out)
        return {"segments": df.height}

    return ensure(unit, build)


def _probe(model, tok, unit, df, texts, emb, choice: tuple[int, bool], means, tags, index, ok) -> dict:
    """The transfer probe on the layer (raw or centred) retrieval chose on the train part."""
    from xlmflow.tasks.evaluate import embeddings

    p = unit.params
    layer, centred = choice
    train = read_set(Location(unit.inputs["set"]["train"].uri))
    if PIVOT not in train.columns or "id" not in train.columns:
        return {"skipped": "the train part has no en or id column"}
    train = labelled_rows(train, PIVOT, p["probe_min_class_rows"])  # a rarer class is not learnt
    common = set(train["class"])
    train = spread(train, p["probe_rows"])
    if train["class"].n_unique() < 2:
        return {"skipped": f"fewer than two classes with {p['probe_min_class_rows']}+ train rows"}
    x = embeddings.embed(model, tok, train["text"].to_list(), tags[PIVOT], index[PIVOT], unit.options["batch_size"])

    def view(vectors: np.ndarray, lang: str) -> np.ndarray:
        return embeddings.centre(vectors, means[lang])[layer] if centred else vectors[layer]

    classes = [id_class(i) for i in df["id"].to_list()]
    tests = {}
    for lang in texts:
        keep = np.array([bool(t) and c in common for t, c in zip(texts[lang], classes)]) & ok[lang]
        tests[lang] = (view(emb[lang], lang)[keep], [c for c, k in zip(classes, keep) if k])
    result = embeddings.probe_accuracy(view(x, PIVOT), train["class"].to_list(), tests, p["seed"])
    return result | {"layer": layer, "centred": centred, "train_rows": train.height}


def usable_rows(texts: dict[str, list], ok: dict[str, np.ndarray], tgt: str) -> list[int]:
    """Rows that can test translation from the pivot into ``tgt``: both sides there, not a copy, the target in
    its language."""
    return [i for i, (s, t) in enumerate(zip(texts[PIVOT], texts[tgt])) if s and t and s != t and ok[tgt][i]]


def test_rows(texts: dict[str, list], ok: dict[str, np.ndarray], tgt: str, p: dict, has_train: bool) -> list[int]:
    """The rows translation is scored on: the first ``translate_segments`` usable ones, after the
    ``translate_shots`` that an eval-only set gives the few-shot prompt as its examples. The fine-tuned model is
    scored on the same rows (:mod:`.finetuned`)."""
    usable = usable_rows(texts, ok, tgt)
    first = 0 if has_train else p["translate_shots"]
    return usable[first : first + p["translate_segments"]]


def _translate(model, tok, unit, df, texts, ok, langs) -> dict:
    """Few-shot translation from the pivot into every other language of the set, on the first
    ``translate_segments`` usable rows (all of them where the set has fewer: ``n`` says how many), scored by
    :func:`.scores.translation_scores` (chrF++, BLEU, ROUGE, bootstrap intervals, the copy-the-source baseline)."""
    from xlmflow.tasks.evaluate import measures, scores

    p = unit.params
    shots_from = read_set(Location(unit.inputs["set"]["train"].uri)) if "train" in unit.inputs["set"] else df
    chrf, bleu, examples, fmt, per_pair = {}, {}, {}, None, {}
    for tgt in [x for x in langs if x != PIVOT]:
        usable = usable_rows(texts, ok, tgt)
        if "train" in unit.inputs["set"]:
            pool = (
                shots_from.filter(
                    pl.col(PIVOT).is_not_null() & pl.col(tgt).is_not_null() & (pl.col(PIVOT) != pl.col(tgt))
                )
                if tgt in shots_from.columns
                else None
            )
            # the shortest pairs: a small model's context must hold the examples and the source
            pool = pool.sort(pl.col(PIVOT).str.len_chars() + pl.col(tgt).str.len_chars()) if pool is not None else None
            shots = list(zip(pool[PIVOT], pool[tgt]))[: p["translate_shots"]] if pool is not None else []
        else:  # an eval-only set: the first usable rows are the examples
            shots = [(texts[PIVOT][i], texts[tgt][i]) for i in usable[: p["translate_shots"]]]
        test = test_rows(texts, ok, tgt, p, "train" in unit.inputs["set"])
        if not test:
            continue
        sources, refs = [texts[PIVOT][i] for i in test], [texts[tgt][i] for i in test]
        new = min(64, model.config.n_positions // 4)
        hyps, fmt = measures.translate(model, tok, shots, sources, PIVOT, tgt, new, unit.options["batch_size"])
        score = scores.translation_scores(hyps, refs, sources, tgt, seed=p["seed"])
        chrf[f"{PIVOT}-{tgt}"], bleu[f"{PIVOT}-{tgt}"] = score["chrf"], score["bleu"]
        per_pair[f"{PIVOT}-{tgt}"] = score
        examples[f"{PIVOT}-{tgt}"] = [
            {"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, refs, hyps))[:3]
        ]
    return {
        "chrf": chrf,
        "bleu": bleu,
        "translation": per_pair,
        "translation_examples": examples,
        "prompt_format": fmt,
    }
