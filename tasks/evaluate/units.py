"""What the evaluate stage's units share, and the language-model unit (one per model: bits per byte beside the
unigram baseline, generation). Shared: the model loader, each unit's ``metrics.json``, the run's tokenizer and
valid documents, the LID model the langid stage used and its flags on a column of texts, rows spread through a
set. The parallel-set unit is :mod:`.sets`; the measures are in :mod:`.measures`."""

from __future__ import annotations

import json
import threading
import zlib
from functools import lru_cache

import numpy as np
import polars as pl

from xlmflow.storage import Aside, Location, read_batches
from xlmflow.storage import shards as shard_store
from xlmflow.tasks.common.runtime import Ref, Unit, ensure, logger
from xlmflow.tasks.common.specials import TOKENIZER_FILE, lang_tag
from xlmflow.tasks.langid import lid
from xlmflow.tasks.langid.lid import detected  # noqa: F401  (re-exported)
from xlmflow.tasks.langid.lid import run_model_path as lid_model_path  # noqa: F401  (re-exported)

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


@lru_cache(maxsize=2)
def run_tokenizer(uri: str, sha256: str):
    """The run's tokenizer (the vocab stage's, which encoded the shards), checked against the sha256 planned."""
    import hashlib

    from tokenizers import Tokenizer

    with Location(uri).open("rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{uri}: changed since the evaluation was planned; rerun the evaluate stage")
    return Tokenizer.from_str(data.decode("utf-8"))


def tokenizer_problem(config: dict, tok) -> str | None:
    """Why ``tok`` cannot be the tokenizer of a model with this ``config.json`` (None when it can): more ids
    than the embedding table has rows, or its end-of-text and language tags at other ids than the model's.
    Feeding such a model those ids would give numbers, but meaningless ones."""
    from xlmflow.tasks.common.specials import EOS

    rows, n = config.get("vocab_size"), tok.get_vocab_size(with_added_tokens=True)
    langs, tags = config.get("langs") or [], config.get("lang_token_ids") or []
    if not langs or len(langs) != len(tags):
        return "config.json names no languages and their tags (langs, lang_token_ids): not an xlmflow model"
    if rows is None or n > rows:
        return f"its tokenizer has {n} ids but the model's embedding table {rows} rows: not the model's tokenizer"
    if tok.token_to_id(EOS) != config.get("eos_token_id"):
        return f"its tokenizer has {EOS} at id {tok.token_to_id(EOS)}, the model at {config.get('eos_token_id')}"
    wrong = [f"{lang_tag(x)} {got} vs {t}" for x, t in zip(langs, tags) if (got := tok.token_to_id(lang_tag(x))) != t]
    if wrong:
        return f"its tokenizer's language tags are not the model's (tokenizer vs model ids: {', '.join(wrong)})"
    return None


def spread(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """At most ``n`` rows taken evenly through the table (sets are sorted by id: the head is one module)."""
    return df if df.height <= n else df.gather_every(-(-df.height // n))


# ---------------------------------------------------------------- the language-model unit
@lru_cache(maxsize=16)
def train_unigram(shard_uri: str, fingerprint: str, lang: str, vocab_size: int) -> np.ndarray:
    """Token counts of a language's train shards (the unigram baseline's model), once per process, shard stage
    and language: a bincount per shard batch's flat ``input_ids`` column. Read-only: the array is shared."""
    from xlmflow.tasks.evaluate import measures

    counts = np.zeros(vocab_size, dtype=np.int64)
    for s in shard_store.list_shards(shard_uri, "train", [lang]):
        shard_store.verify(s)
        for batch in read_batches(Location(s.uri), ["input_ids"], 65536):
            counts += measures.unigram_counts(batch.column(0).flatten().to_numpy(zero_copy_only=False), vocab_size)
    counts.flags.writeable = False
    return counts


def lm_unit(unit: Unit) -> Ref:
    """Bits per byte and generation for every language of one model."""
    from xlmflow.tasks.evaluate import measures

    ((label, model_in),) = unit.each("model")
    p, batch = unit.params, unit.options["batch_size"]

    def build(aside: Aside) -> dict:
        model, tok = load_model(model_in.uri, model_in.fingerprint)
        lid_model = lid.load_model(unit.input("lid").uri)
        if problem := tokenizer_problem(model.config.to_dict(), tok):
            raise ValueError(f"model {label} ({model_in.uri}): {problem}")
        shard_in, vocab_in = unit.input("shard"), unit.input("vocab")
        run_tok = run_tokenizer(vocab_in.uri, vocab_in.fingerprint)  # encoded the shards: decodes them
        run_tags = [i for i, t in run_tok.get_added_tokens_decoder().items() if t.content.startswith("<lang:")]
        bpb, ppl, detail, rate, texts = {}, {}, {}, {}, {}
        bpc, unigram, beats, generation = {}, {}, {}, {}
        for i, lang in enumerate(model.config.langs):
            run_docs = valid_docs(shard_in.uri, lang, p["max_docs"])
            if not run_docs:
                continue
            # the valid text, the same for every model (so are its bytes), tokenised by the model's own tokenizer
            plain = measures.doc_texts(run_tok, run_docs)
            docs = measures.encode_docs(tok, plain, model.config.lang_token_ids[i], model.config.eos_token_id)
            r = measures.bits_per_byte(model, docs, plain, i + 1, batch)
            r["roundtrip_mismatches"] = sum(a != b for a, b in zip(measures.doc_texts(tok, docs), plain))
            counts = train_unigram(shard_in.uri, shard_in.fingerprint, lang, run_tok.get_vocab_size())
            base = measures.unigram_baseline(counts, run_docs, plain, run_tags)  # the run's tokens
            bpb[lang], ppl[lang], bpc[lang] = r["bits_per_byte"], r["token_perplexity"], r["bits_per_char"]
            detail[lang] = r
            unigram[lang] = {k: base[k] for k in ("bits_per_byte", "bits_per_char", "nats_per_token", "targets")}
            beats[lang] = bool(r["bits_per_byte"] < base["bits_per_byte"])
            generation[lang], texts[lang] = _generation(model, tok, lid_model, docs, lang, p, batch)
            rate[lang] = generation[lang]["rate"]
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
                "bits_per_char": bpc,
                "unigram_baseline": unigram,
                "beats_unigram": beats,
                "generation_language_rate": rate,
                "generation": generation,
                "generations": texts,
            },
        )
        return {"languages": len(bpb)}

    return ensure(unit, build)


def generation_seed(seed: int, lang: str) -> int:
    """The sampling seed of one language: from the unit's seed and the language, so each language has its own
    stream and no unit depends on what another thread drew."""
    return zlib.crc32(f"{seed}/{lang}".encode())


def _generation(
    model, tok, lid_model, docs: list[np.ndarray], lang: str, p: dict, batch: int = 32
) -> tuple[dict, list[dict]]:
    """Greedy and sampled continuations of the first ``prompts`` documents long enough to continue whose prompt LID
    labels ``lang`` (the prompt is their first ``prompt_tokens`` tokens, tag included, fewer where that would end
    inside a character (:func:`.measures.whole_character_cut`): a Catalan sentence in the fr
    shard would ask the model to go on in Catalan), scored: the share LID finds in ``lang`` with degenerate
    texts as misses (:func:`.measures.language_hits`), degenerate count, distinct-2, and ROUGE against each
    document's own next ``gen_tokens`` tokens (the reference a continuation has)."""
    from xlmflow.tasks.evaluate import measures, scores

    k, new = p["prompt_tokens"], p["gen_tokens"]
    long = [(d, measures.whole_character_cut(tok, d, k)) for d in docs if len(d) > k + 1][: 10 * p["prompts"]]
    in_lang = measures.language_hits(lid_model, [tok.decode(d[1:c].tolist()) for d, c in long], lang)
    chosen = [dc for dc, hit in zip(long, in_lang) if hit][: p["prompts"]]
    prompts = [d[:c].tolist() for d, c in chosen]
    refs = [tok.decode(d[c : c + new].tolist(), skip_special_tokens=True) for d, c in chosen]
    greedy = measures.generate(model, tok, prompts, new, sample=False, batch_size=batch)
    seed = generation_seed(p["seed"], lang)
    sampled = measures.generate(model, tok, prompts, new, sample=True, seed=seed, batch_size=batch)
    both = greedy + sampled
    hits, bad = measures.language_hits(lid_model, both, lang), scores.degenerate(both)
    out: dict = {"prompts": len(prompts), "reference": f"the document's next {new} tokens"}
    for mode, half in (("greedy", slice(0, len(greedy))), ("sampled", slice(len(greedy), None))):
        out[mode] = {"rate": float(hits[half].mean()) if len(prompts) else 0.0, "degenerate": int(bad[half].sum())}
    out |= {
        "rate": float(hits.mean()) if len(hits) else 0.0,
        "n": len(both),
        "degenerate": int(bad.sum()),
        "distinct_2": float(np.mean(scores.distinct_2s(both))) if both else 0.0,
    }
    out |= scores.rouge(both, refs + refs)
    texts = [
        {"prompt": tok.decode(q[1:]), "greedy": g, "sampled": s, "reference": r}
        for q, g, s, r in zip(prompts, greedy, sampled, refs)
    ]
    return out, texts
