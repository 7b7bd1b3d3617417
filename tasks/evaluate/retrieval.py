"""Translation retrieval on a parallel set, as the set unit measures it: per language pair, acc@1 both ways of
the model's mean-pooled hidden states on the eval rows, at the layer (raw or centred) chosen on the set's train
part, or fixed in advance where it has none; beside chance and two lexical baselines (:mod:`.lexical`). Rows
whose two sides are empty, identical or not in their column's language are dropped and counted."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from xlmflow.storage import Location
from xlmflow.tasks.common.parallel_sets import read_set
from xlmflow.tasks.common.runtime import Unit
from xlmflow.tasks.evaluate import lexical
from xlmflow.tasks.evaluate.units import detected, spread, valid_docs

#: the choice where a set has no train part: the middle transformer layer, centred (Libovický et al. 2020 find
#: centring helps retrieval at every layer; the middle layers of a GPT-style model are the least tied to next-token
#: surface form). Fixed in advance, so it is not selected on the rows it is measured on.
FIXED_CENTRED = True


def fixed_layer(n_layer: int) -> int:
    """The middle transformer layer (hidden state index; 0 is the embeddings): 2 of 4, 6 of 12, 1 of 1."""
    return max(1, (n_layer + 1) // 2)


def fit_side(unit: Unit, run_tok, lid_model, langs: list[str], embed) -> dict:
    """What retrieval may learn from without touching the eval rows: the set's train part (``max_segments``
    rows spread through it: its texts, LID flags and embeddings, which choose the layer) and each language's
    centring mean, from those train rows, else from the run's valid shards (the set has no train part, or none
    of that language: the first ``max_segments`` valid documents of the language, decoded by ``run_tok``, the
    tokenizer that encoded the shards)."""
    from xlmflow.tasks.evaluate import embeddings
    from xlmflow.tasks.evaluate.measures import doc_texts

    p = unit.params
    texts, ok, emb = {}, {}, {}
    if "train" in unit.inputs["set"]:
        train = spread(read_set(Location(unit.inputs["set"]["train"].uri)), p["max_segments"])
        texts = {lang: train[lang].to_list() for lang in langs if lang in train.columns}
        ok = {lang: detected(lid_model, column, lang) for lang, column in texts.items()}
        emb = embed(texts)
    means, sources = {}, {}
    rows = {lang: np.array([bool(t) for t in column]) for lang, column in texts.items()}
    valid = {
        lang: doc_texts(run_tok, valid_docs(unit.input("shard").uri, lang, p["max_segments"]))
        for lang in langs
        if not rows.get(lang, np.zeros(0, bool)).any()
    }
    valid_emb = embed(valid) if valid else {}
    for lang in langs:
        if lang in valid_emb:
            means[lang], sources[lang] = embeddings.language_mean(valid_emb[lang]), "valid shards"
        else:
            means[lang], sources[lang] = embeddings.language_mean(emb[lang], rows[lang]), "train part"
    kinds = sorted(set(sources.values()))
    source = (
        kinds[0]
        if len(kinds) == 1
        else "train part; valid shards for "
        + ", ".join(sorted(lang for lang, s in sources.items() if s == "valid shards"))
    )
    return {"texts": texts, "ok": ok, "emb": emb, "means": means, "centring": source}


def _usable(ta: list, tb: list, oka: np.ndarray, okb: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rows of a pair that test retrieval, and why the others were dropped: an empty side, an untranslated copy,
    a side the LID model does not detect as its column's language."""
    empty = np.array([not x or not y for x, y in zip(ta, tb)], dtype=bool)
    same = np.array([bool(x) and x == y for x, y in zip(ta, tb)], dtype=bool)
    wrong = ~empty & ~same & ~(oka & okb)
    dropped = {"empty": int(empty.sum()), "identical": int(same.sum()), "wrong_language": int(wrong.sum())}
    return ~(empty | same | wrong), dropped


def _layer_accuracy(texts: dict, ok: dict, emb: dict, means: dict) -> tuple[dict, dict]:
    """Per language pair with two usable rows: (kept rows, acc@1 [raw/centred, layers, a->b/b->a]); and every
    pair's dropped rows."""
    from xlmflow.tasks.evaluate import embeddings

    centred = {lang: embeddings.centre(emb[lang], means[lang]) for lang in texts}
    pairs, dropped = {}, {}
    for a, b in combinations(list(texts), 2):
        keep, dropped[f"{a}-{b}"] = _usable(texts[a], texts[b], ok[a], ok[b])
        if keep.sum() >= 2:
            raw = embeddings.retrieval_accuracy(emb[a][:, keep], emb[b][:, keep])
            cen = embeddings.retrieval_accuracy(centred[a][:, keep], centred[b][:, keep])
            pairs[f"{a}-{b}"] = (keep, np.stack([raw, cen]))
    return pairs, dropped


def score_retrieval(tok, texts: dict, ok: dict, emb: dict, fit: dict, n_layer: int) -> dict:
    """Translation retrieval on the eval rows: the layer and raw/centred chosen on the train part's pairs
    (the mean of acc@1 both ways over pairs; ties: raw, then the lower layer), else fixed in advance; beside
    chance, a bag of token ids and character 3-gram TF-IDF (the lexical overlap a model must beat)."""
    pairs, dropped = _layer_accuracy(texts, ok, emb, fit["means"])
    train_pairs, _ = _layer_accuracy(fit["texts"], fit["ok"], fit["emb"], fit["means"]) if fit["texts"] else ({}, {})
    empty = {"chance": None, "layer": None, "centred": None, "acc_at_1": None, "beats_baselines": None}
    if not pairs:
        return empty | {"pairs": {}, "dropped": dropped, "n_pairs": 0, "n_layer": n_layer}
    train_score = None
    if train_pairs:
        train_score = np.mean([acc.mean(axis=2) for _, acc in train_pairs.values()], axis=0)  # [2, layers]
        variant, layer = (int(i) for i in np.unravel_index(np.argmax(train_score), train_score.shape))
        rule = "train_argmax"
    else:
        variant, layer, rule = int(FIXED_CENTRED), min(fixed_layer(n_layer), n_layer), "fixed_middle"
    counts = {lang: lexical.token_counts(tok, [t or "" for t in column]) for lang, column in texts.items()}
    per_pair = {}
    for key, (keep, acc) in pairs.items():
        a, b = key.split("-")
        chars = lexical.char_ngram_tfidf(
            [t for t, k in zip(texts[a], keep) if k], [t for t, k in zip(texts[b], keep) if k]
        )
        baselines = {
            "bag_of_tokens": float(lexical.sparse_retrieval_accuracy(counts[a][keep], counts[b][keep]).mean()),
            "char3_tfidf": float(lexical.sparse_retrieval_accuracy(*chars).mean()),
        }
        at = float(acc[variant, layer].mean())
        per_pair[key] = {
            "rows": int(keep.sum()),
            "chance": 1.0 / int(keep.sum()),
            "acc_at_1": at,
            "forward": float(acc[variant, layer, 0]),
            "backward": float(acc[variant, layer, 1]),
            "embedding_acc_at_1": float(acc[variant, 0].mean()),
            "baselines": baselines,
            "beats_baselines": at > max(baselines.values()),
            "per_layer": {"raw": acc[0].mean(axis=1).tolist(), "centred": acc[1].mean(axis=1).tolist()},
        }

    def mean(get) -> float:
        return float(np.mean([get(v) for v in per_pair.values()]))

    baselines = {k: mean(lambda v, k=k: v["baselines"][k]) for k in ("bag_of_tokens", "char3_tfidf")}
    acc_at_1 = mean(lambda v: v["acc_at_1"])
    return {
        "chance": mean(lambda v: v["chance"]),
        "baselines": baselines,
        "layer": layer,
        "centred": bool(variant),
        "layer_rule": rule,
        "centring": fit["centring"],
        "acc_at_1": acc_at_1,
        "embedding_acc_at_1": mean(lambda v: v["embedding_acc_at_1"]),
        "beats_baselines": acc_at_1 > max(baselines.values()),
        "per_layer": {
            "raw": np.mean([acc[0].mean(axis=1) for _, acc in pairs.values()], axis=0).tolist(),
            "centred": np.mean([acc[1].mean(axis=1) for _, acc in pairs.values()], axis=0).tolist(),
        },
        "train_per_layer": None
        if train_score is None
        else {"raw": train_score[0].tolist(), "centred": train_score[1].tolist()},
        "train_rows": {k: int(keep.sum()) for k, (keep, _) in train_pairs.items()},
        "n_layer": n_layer,
        "n_pairs": len(per_pair),
        "pairs": per_pair,
        "dropped": dropped,
    }
