"""The evaluate stage's unit bodies: the language-model unit (one per model: bits per byte, generation) and
the parallel-set unit (one per model and set: retrieval, transfer probe, translation, contamination), the
model loader they share, and the ``metrics.json`` each writes. The measures themselves are in :mod:`.measures`.
"""

from __future__ import annotations

import json
import re
import threading
from functools import lru_cache
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xlmflow.storage import Aside, Location, read_batches
from xlmflow.storage import shards as shard_store
from xlmflow.tasks.common.parallel_sets import PIVOT, languages, read_set
from xlmflow.tasks.common.runtime import Ref, Unit, ensure, logger
from xlmflow.tasks.common.specials import TOKENIZER_FILE, lang_tag
from xlmflow.tasks.langid import lid

if TYPE_CHECKING:  # the measures import torch: each unit body imports them, so the CLI starts without torch
    from xlmflow.tasks.evaluate import measures

METRICS = "metrics.json"


_load_lock = threading.Lock()


def load_model(uri: str, fingerprint: str):
    """(model, tokenizer) of a model folder, once per process and fingerprint. Locked: units run on
    threads, and transformers builds models on the meta device through process-wide state."""
    with _load_lock:
        return _load_model(uri, fingerprint)


@lru_cache(maxsize=2)
def _load_model(uri: str, fingerprint: str):
    import torch
    import transformers
    from tokenizers import Tokenizer

    from xlmflow.tasks.common.model import register

    register()  # transformers' Auto classes know xlmflow-gpt2 however transformers was first imported
    transformers.utils.logging.disable_progress_bar()  # a bar per load would litter plain-text run logs

    loc = Location(uri)
    # safetensors only: a pickled .bin in a model folder (a --model given by a user) is never unpickled
    model = transformers.AutoModelForCausalLM.from_pretrained(loc.path, use_safetensors=True)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, Tokenizer.from_file(loc.child(TOKENIZER_FILE).path)


def write_metrics(aside: Aside, metrics: dict) -> None:
    with aside.path(METRICS).open("wb") as f:
        f.write(json.dumps(metrics, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")


def read_metrics(uri: str) -> dict:
    with Location(uri).child(METRICS).open("rb") as f:
        return json.loads(f.read())


# ---------------------------------------------------------------- the language-model unit
def valid_docs(shard_uri: str, lang: str, limit: int) -> list[np.ndarray]:
    """The first ``limit`` validation documents of a language, as token ids (checksums verified)."""
    docs: list[np.ndarray] = []
    for s in shard_store.list_shards(shard_uri, "valid", [lang]):
        shard_store.verify(s)
        for batch in read_batches(Location(s.uri), ["input_ids"], 1024):
            docs += [np.asarray(x, dtype=np.int64) for x in batch.column(0).to_numpy(zero_copy_only=False)]
            if len(docs) >= limit:
                return docs[:limit]
    return docs


def lm_unit(unit: Unit) -> Ref:
    """Bits per byte and generation for every language of one model."""
    from xlmflow.tasks.evaluate import measures

    ((label, model_in),) = unit.each("model")
    p, batch = unit.params, unit.options["batch_size"]

    def build(aside: Aside) -> dict:
        model, tok = load_model(model_in.uri, model_in.fingerprint)
        lid_model = lid.load_model(unit.input("lid").uri)
        bpb, ppl, detail, rate, texts = {}, {}, {}, {}, {}
        for i, lang in enumerate(model.config.langs):
            docs = valid_docs(unit.input("shard").uri, lang, p["max_docs"])
            if not docs:
                continue
            r = measures.bits_per_byte(model, tok, docs, i + 1, batch)
            bpb[lang], ppl[lang], detail[lang] = r["bits_per_byte"], r["token_perplexity"], r
            prompts = [d[: p["prompt_tokens"]].tolist() for d in docs[: p["prompts"]]]
            greedy = measures.generate(model, tok, prompts, p["gen_tokens"], sample=False)
            sampled = measures.generate(model, tok, prompts, p["gen_tokens"], sample=True, seed=p["seed"])
            rate[lang] = measures.language_rate(lid_model, greedy + sampled, lang)
            texts[lang] = [
                {"prompt": tok.decode(q[1:]), "greedy": g, "sampled": s} for q, g, s in zip(prompts, greedy, sampled)
            ]
            logger().info(
                "evaluate %s %s: %.3f bits/byte, generation in-language %.2f", label, lang, bpb[lang], rate[lang]
            )
        write_metrics(
            aside,
            {
                "model": label,
                "bits_per_byte": bpb,
                "token_perplexity": ppl,
                "bpb_detail": detail,
                "generation_language_rate": rate,
                "generations": texts,
            },
        )
        return {"languages": len(bpb)}

    return ensure(unit, build)


# ---------------------------------------------------------------- the parallel-set unit
def id_class(segment_id: str) -> str:
    """The probe's class of a segment: the LibreOffice help module (``text/<module>/...``), else the
    handbook chapter (``<chapter>.html#...``), else what comes before the first ``#``."""
    if segment_id.startswith("text/") and segment_id.count("/") >= 2:
        return segment_id.split("/")[1]
    return re.split(r"\.html|#", segment_id, maxsplit=1)[0]


def detected(lid_model, texts: list[str | None], lang: str) -> np.ndarray:
    """Whether the langid model detects each text as ``lang`` (one batch predict; empty texts are not;
    a ``ja`` label on text without kana counts as ``zh``, as the langid stage decides)."""
    s = pl.Series([t or "" for t in texts], dtype=pl.String)
    labels, _ = lid.predict(lid_model, s, 1, 4096)
    top = pl.from_arrow(labels).list.first()
    kana = s.str.contains(r"[\p{Hiragana}\p{Katakana}]")
    top = pl.select(pl.when((top == "ja") & ~kana).then(pl.lit("zh")).otherwise(top)).to_series()
    return ((top == lang) & (s.str.len_chars() > 0)).fill_null(False).to_numpy()


def set_unit(unit: Unit) -> Ref:
    """Retrieval, transfer probe, translation and contamination of one model on one parallel set."""
    from xlmflow.tasks.evaluate import measures

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
        emb = {
            lang: measures.embed(model, tok, [t or "" for t in texts[lang]], tags[lang], index[lang], batch)
            for lang in langs
        }
        retrieval = _retrieval(texts, ok, emb)
        out = {"model": label, "set": name, "languages": langs, "retrieval": retrieval}
        if "train" in unit.inputs["set"] and "id" in df.columns:
            out["transfer"] = _probe(model, tok, unit, df, texts, emb, retrieval["best_layer"], tags, index, ok)
        if PIVOT in langs:
            out |= _translate(model, tok, unit, df, texts, ok, langs)
        out["contamination"] = _contamination(
            tok, unit.input("shard").uri, unit.input("shard").fingerprint, texts, p["ngram"]
        )
        write_metrics(aside, out)
        return {"segments": df.height}

    return ensure(unit, build)


def _retrieval(texts: dict, ok: dict, emb: dict) -> dict:
    from xlmflow.tasks.evaluate import measures

    langs, pairs, dropped, chance, per_layer = list(texts), {}, {}, {}, []
    for a, b in combinations(langs, 2):
        ta, tb = texts[a], texts[b]
        empty = np.array([not x or not y for x, y in zip(ta, tb)])
        same = np.array([bool(x) and x == y for x, y in zip(ta, tb)])
        wrong = ~empty & ~same & ~(ok[a] & ok[b])
        keep = ~(empty | same | wrong)
        key = f"{a}-{b}"
        dropped[key] = {"empty": int(empty.sum()), "identical": int(same.sum()), "wrong_language": int(wrong.sum())}
        if keep.sum() < 2:
            continue
        acc = measures.retrieval_accuracy(emb[a][:, keep], emb[b][:, keep])  # [layers, 2]
        pairs[key], chance[key] = acc, 1.0 / int(keep.sum())
        per_layer.append(acc.mean(axis=1))
    if not pairs:
        return {"chance": None, "best_layer": None, "acc_at_1": {}, "dropped": dropped, "pairs": 0}
    layer_means = np.mean(per_layer, axis=0)
    best = int(np.argmax(layer_means))
    return {
        "chance": float(np.mean(list(chance.values()))),
        "best_layer": best,
        "acc_at_1": {k: float(v[best].mean()) for k, v in pairs.items()},
        "mean_acc_at_1": float(layer_means[best]),
        "per_layer_mean": [float(x) for x in layer_means],
        "directions": {k: {"forward": float(v[best, 0]), "backward": float(v[best, 1])} for k, v in pairs.items()},
        "chance_per_pair": chance,
        "rows": {k: round(1 / c) for k, c in chance.items()},
        "dropped": dropped,
        "pairs": len(pairs),
    }


def _probe(model, tok, unit, df, texts, emb, layer, tags, index, ok) -> dict:
    from xlmflow.tasks.evaluate import measures

    p = unit.params
    train = read_set(Location(unit.inputs["set"]["train"].uri))
    if PIVOT not in train.columns or "id" not in train.columns:
        return {"skipped": "the train part has no en or id column"}
    train = train.filter(pl.col(PIVOT).is_not_null() & (pl.col(PIVOT) != "")).with_columns(
        pl.col("id").map_elements(id_class, return_dtype=pl.String).alias("class")
    )
    counts = train["class"].value_counts()
    common = set(counts.filter(pl.col("count") >= p["probe_min_class_rows"])["class"])  # a rarer class is not learnt
    train = spread(train.filter(pl.col("class").is_in(sorted(common))), p["probe_rows"])
    if train["class"].n_unique() < 2:
        return {"skipped": f"fewer than two classes with {p['probe_min_class_rows']}+ train rows"}
    x = measures.embed(model, tok, train[PIVOT].to_list(), tags[PIVOT], index[PIVOT], unit.options["batch_size"])
    classes = [id_class(i) for i in df["id"].to_list()]
    tests = {}
    for lang in texts:
        keep = np.array([bool(t) and c in common for t, c in zip(texts[lang], classes)]) & ok[lang]
        tests[lang] = (emb[lang][layer][keep], [c for c, k in zip(classes, keep) if k])
    result = measures.probe_accuracy(x[layer], train["class"].to_list(), tests, p["seed"])
    return result | {"layer": layer, "train_rows": train.height}


def spread(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """At most ``n`` rows taken evenly through the table (sets are sorted by id: the head is one module)."""
    return df if df.height <= n else df.gather_every(-(-df.height // n))


def _translate(model, tok, unit, df, texts, ok, langs) -> dict:
    from xlmflow.tasks.evaluate import measures

    p = unit.params
    shots_from = read_set(Location(unit.inputs["set"]["train"].uri)) if "train" in unit.inputs["set"] else df
    chrf, bleu, examples, fmt = {}, {}, {}, None
    for tgt in [x for x in langs if x != PIVOT]:
        usable = [i for i, (s, t) in enumerate(zip(texts[PIVOT], texts[tgt])) if s and t and s != t and ok[tgt][i]]
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
            test = usable[: p["translate_segments"]]
        else:  # an eval-only set: the first usable rows are the examples
            shots = [(texts[PIVOT][i], texts[tgt][i]) for i in usable[: p["translate_shots"]]]
            test = usable[p["translate_shots"] : p["translate_shots"] + p["translate_segments"]]
        if not test:
            continue
        sources, refs = [texts[PIVOT][i] for i in test], [texts[tgt][i] for i in test]
        hyps, fmt = measures.translate(model, tok, shots, sources, PIVOT, tgt, min(64, model.config.n_positions // 4))
        score = measures.chrf_bleu(hyps, refs, tgt)
        chrf[f"{PIVOT}-{tgt}"], bleu[f"{PIVOT}-{tgt}"] = score["chrf"], score["bleu"]
        examples[f"{PIVOT}-{tgt}"] = [
            {"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, refs, hyps))[:3]
        ]
    return {"chrf": chrf, "bleu": bleu, "translation_examples": examples, "prompt_format": fmt}


@lru_cache(maxsize=2)
def train_ngrams(shard_uri: str, fingerprint: str, n: int) -> measures.NgramIndex:
    """Every n-gram of the train shards (within documents), once per process and shard stage."""
    from xlmflow.tasks.evaluate import measures

    index = measures.NgramIndex(n)
    for s in shard_store.list_shards(shard_uri, "train"):
        shard_store.verify(s)
        for batch in read_batches(Location(s.uri), ["input_ids"], 4096):
            col = batch.column(0)
            flat = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
            index.add(flat, col.offsets.to_numpy()[:-1].astype(np.int64) - col.offsets[0].as_py())
    index.freeze()
    return index


def _contamination(tok, shard_uri: str, fingerprint: str, texts: dict, n: int) -> dict:
    index = train_ngrams(shard_uri, fingerprint, n)
    out = {}
    for lang, column in texts.items():
        segs = [t for t in column if t]
        ids = [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(segs, add_special_tokens=False)]
        hits = index.hits(ids)
        out[lang] = {"share": float(hits.mean()) if len(hits) else 0.0, "segments": len(segs), "hits": int(hits.sum())}
    return {"ngram": n, "per_language": out}
