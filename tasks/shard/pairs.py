"""Translation pairs for training: the train parts of the run's parallel sets, tokenised, one file per set.

The training loader (:mod:`xlmflow.tasks.train.data`) makes pair examples of them, ``<lang:a> src <|endoftext|>
<lang:b> tgt <|endoftext|>`` for two languages of one row, either direction (XLM's translation language modelling,
made causal). This unit stores what examples are made of, per row of the set's train part and per language ``L``:
``L`` (the segment as a document is sharded: ``<lang:L>`` + tokens + ``<|endoftext|>``), ``ok_L`` (not empty,
detected as ``L`` by the LID model the langid stage used, and sharing no ``langid.holdout_ngram``-unit n-gram with
any eval segment of the run's sets, nor with any document of the run's validation split: the rule that holds
corpus documents out, so the pairs do not teach the model the text evaluation measures) and ``h_L`` (a hash of the
text). The validation split matters as much as the eval parts: a parallel set is often cut from the same manuals as
the corpus (the demo's are), and without this check the pair blocks held 88-100% of the 8-word n-grams of the core
languages' validation documents: bits per byte were measured on text the model had trained on (the demo's 0.9M
parameters did not memorise it, 0.003 bits per byte in bench/RESULTS.md; a larger model would).

Two sides make an example when both are ok and their hashes differ: the checks evaluation applies to its rows (an
empty side, an untranslated copy, a side in the wrong language). Eval parts are never read here: they stay held out
of everything trained. Languages the vocabulary has no tag for are left out.

    shard/pairs/<set>/pairs-<set>.parquet
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from xlmflow.storage import Aside, FileWriter, Location, RunDir, file_sha256, read_batches, read_record, stable_hashes
from xlmflow.storage.fingerprint import stable_hashes64
from xlmflow.storage.shards import PAIRS, STAGE, usable
from xlmflow.tasks.common.ngrams import members, ngram_hashes, sorted_unique, text_units
from xlmflow.tasks.common.parallel_sets import languages, parallel_files, read_set, set_name
from xlmflow.tasks.common.runtime import Input, Ref, Unit, ensure
from xlmflow.tasks.common.specials import EOS, TOKENIZER_FILE, lang_tag
from xlmflow.tasks.langid import lid, overlap
from xlmflow.tasks.langid.params import LangidParams
from xlmflow.tasks.shard.encode import load_tokenizer, token_type, tokenize

HASH_SEED = 0x5EED  # the text hash that finds untranslated copies (any fixed seed)


def pair_file(name: str) -> str:
    return f"{PAIRS}-{name}.parquet"


def plan_pairs(
    run: RunDir, parallel: list[str], tokenizer: Input, ids_type: str, code: str, valid: list[Unit]
) -> list[Unit]:
    """One unit per parallel set with a train part; its inputs are the file's sha256, the tokenizer's and the LID
    model's, the eval parts' and the clean files that hold the validation documents (``valid``: the stage's valid
    shard units, whose row ranges and hash threshold say which documents those are), so an edited set,
    vocabulary, judge or validation split rebuilds it alone."""
    files = parallel_files(parallel, ("train",))
    if not files:
        return []
    judge = lid.run_model_path(run)
    held = {loc.uri: Input(loc.uri, file_sha256(loc.fs, loc.path)[0]) for _, loc in parallel_files(parallel, ("eval",))}
    ngram = ((read_record(run) or {}).get("langid") or {}).get("holdout_ngram", LangidParams().holdout_ngram)
    valid_ranges = sorted([u.params["lang"], *r, u.params["threshold"]] for u in valid for r in u.params["ranges"])
    valid_files = {path: i for u in valid for path, i in u.inputs["langid"].items()}
    units = []
    for _, loc in files:
        name = set_name(loc)
        units.append(
            Unit(
                stage=STAGE,
                name=f"{PAIRS}/{name}",
                out=run.unit(STAGE, name, group=PAIRS).uri,
                code_version=code,
                params={
                    "split": PAIRS,
                    "set": name,
                    "token_type": ids_type,
                    "hash_seed": HASH_SEED,
                    "holdout_ngram": ngram,
                    "valid_docs": valid_ranges,  # [lang, clean file, first row, end row, hash threshold]
                    "valid_seed": valid[0].params["seed"] if valid else 0,
                },
                inputs={
                    "tokenizer": {TOKENIZER_FILE: tokenizer},
                    "set": {loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])},
                    "lid": {"model": Input(judge, lid.model_fingerprint(judge))},
                    "eval": held,
                    "valid": valid_files,
                },
            )
        )
    return units


def pairs_unit(unit: Unit) -> Ref:
    """Tokenise one set's train part, every language column, with its ok flags and text hashes."""
    p = unit.params
    tokenizer = unit.input("tokenizer")
    (source,) = unit.inputs["set"].values()
    vocab_loc = Location(tokenizer.uri).parent

    def build(aside: Aside) -> dict[str, Any]:
        tok = load_tokenizer(vocab_loc, tokenizer.fingerprint)
        ids_type = pa.type_for_alias(p["token_type"])
        if token_type(tok.get_vocab_size(with_added_tokens=True)) != ids_type:
            raise ValueError(f"{vocab_loc}: the tokenizer changed since planning; rerun the shard stage")
        df = read_set(Location(source.uri))
        langs = [lang for lang in languages(df) if tok.token_to_id(lang_tag(lang)) is not None]
        judge = lid.load_model(unit.input("lid").uri)
        index = overlap.eval_index(
            tuple(sorted((i.uri, i.fingerprint) for i in unit.inputs["eval"].values())), p["holdout_ngram"]
        )
        columns: dict[str, pa.Array] = {"row": pa.array(np.arange(df.height, dtype=np.int32))}
        sides = {lang: df[lang].fill_null("") for lang in langs}
        in_valid = valid_overlap(sides, valid_texts(unit), p["holdout_ngram"])
        held_out, valid_held = {}, {}
        for lang, texts in sides.items():
            tag, eos = tok.token_to_id(lang_tag(lang)), tok.token_to_id(EOS)
            ids, n_tokens = tokenize(tok, texts.to_arrow(), tag, eos, ids_type)
            held = overlap.eval_ngrams(index, texts).to_numpy() > 0
            held_out[lang], valid_held[lang] = int(held.sum()), int(in_valid[lang].sum())
            columns[lang] = ids
            ok = lid.detected(judge, texts.to_list(), lang) & (n_tokens > 2) & ~held & ~in_valid[lang]
            columns[f"ok_{lang}"] = pa.array(ok)
            columns[f"h_{lang}"] = pa.array(stable_hashes(texts.to_arrow(), p["hash_seed"]))
        table = pa.table(columns)
        writer = FileWriter(aside.path(pair_file(p["set"])), table.schema)
        writer.write(table)
        writer.close()
        counts = {f"{a}-{b}": int(usable(table, a, b).sum()) for a, b in combinations(langs, 2)}
        return {
            "set": p["set"],
            "rows": df.height,
            "langs": langs,
            "usable_pairs": counts,
            "eval_overlap": held_out,
            "valid_overlap": valid_held,
        }

    return ensure(unit, build)


def valid_texts(unit: Unit) -> Iterator[pl.Series]:
    """The run's validation documents, every language's, in batches: the valid shards' rows of the clean files,
    picked by the same hash rule (:mod:`.split`). Every language, not only the set's: a manual translated into
    more languages than the set holds keeps commands, paths and untranslated paragraphs verbatim (the demo's
    handbook sides share an 11-unit n-gram with 52 validation documents of their own language and ~150 of any)."""
    p = unit.params
    for _lang, path, start, stop, threshold in p["valid_docs"]:
        for batch in read_batches(Location(unit.inputs["valid"][path].uri), ["doc_id", "text"], 1 << 14, start, stop):
            mine = stable_hashes(batch.column(0), p["valid_seed"]) < threshold
            yield pl.Series(batch.column(1).filter(pa.array(mine)))


def valid_overlap(sides: dict[str, pl.Series], valid: Iterable[pl.Series], n: int) -> dict[str, np.ndarray]:
    """Per language, one bool per row: the side shares an n-gram of ``n`` text units (:func:`~xlmflow.tasks.common.
    ngrams.text_units`, the langid holdout's units) with a validation document; with ``n`` = 0, is one. Memory
    follows the pairs, not the validation split: only the pairs' n-grams are kept, and those the split holds."""
    grams = {lang: _grams(texts, n) for lang, texts in sides.items()}
    wanted = sorted_unique(np.concatenate([np.zeros(0, np.uint64), *(h for h, _ in grams.values())]))
    found = [np.zeros(0, np.uint64)]
    for texts in valid:
        h, _ = _grams(texts, n)
        found.append(h[members(wanted, h)])
    found_sorted = sorted_unique(np.concatenate(found))
    return {
        lang: np.bincount(doc[members(found_sorted, h)], minlength=len(sides[lang])) > 0
        for lang, (h, doc) in grams.items()
    }


def _grams(texts: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, the row of each) of the texts' ``n``-unit n-grams; with ``n`` = 0, one hash of each whole text."""
    if n > 0:
        flat, starts, _ = text_units(texts)
        return ngram_hashes(flat, starts, n)
    return stable_hashes64(texts.to_arrow(), HASH_SEED), np.arange(len(texts))
