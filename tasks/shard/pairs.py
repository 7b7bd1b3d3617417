"""Translation pairs for training: the train parts of the run's parallel sets, tokenised, one file per set.

The training loader (:mod:`xlmflow.tasks.train.data`) makes pair examples of them, ``<lang:a> src <|endoftext|>
<lang:b> tgt <|endoftext|>`` for two languages of one row, either direction (XLM's translation language modelling,
made causal). This unit stores what examples are made of, per row of the set's train part and per language ``L``:
``L`` (the segment as a document is sharded: ``<lang:L>`` + tokens + ``<|endoftext|>``), ``ok_L`` (not empty,
detected as ``L`` by the LID model the langid stage used, and sharing no ``langid.holdout_ngram``-unit n-gram with
any eval segment of the run's sets: the rule that holds corpus documents out, so the pairs do not teach the model
the text evaluation measures) and ``h_L`` (a hash of the text). Two sides make an
example when both are ok and their hashes differ: the checks evaluation applies to its rows (an empty side, an
untranslated copy, a side in the wrong language). Eval parts are never read here: they stay held out of everything
trained. Languages the vocabulary has no tag for are left out.

    shard/pairs/<set>/pairs-<set>.parquet
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from xlmflow.storage import Aside, FileWriter, Location, RunDir, file_sha256, read_record, stable_hashes
from xlmflow.storage.shards import PAIRS, STAGE, usable
from xlmflow.tasks.common.parallel_sets import languages, parallel_files, read_set, set_name
from xlmflow.tasks.common.runtime import Input, Ref, Unit, ensure
from xlmflow.tasks.common.specials import EOS, TOKENIZER_FILE, lang_tag
from xlmflow.tasks.langid import lid, overlap
from xlmflow.tasks.langid.params import LangidParams
from xlmflow.tasks.shard.encode import load_tokenizer, token_type, tokenize

HASH_SEED = 0x5EED  # the text hash that finds untranslated copies (any fixed seed)


def pair_file(name: str) -> str:
    return f"{PAIRS}-{name}.parquet"


def plan_pairs(run: RunDir, parallel: list[str], tokenizer: Input, ids_type: str, code: str) -> list[Unit]:
    """One unit per parallel set with a train part; its inputs are the file's sha256, the tokenizer's and the LID
    model's, so an edited set, vocabulary or judge rebuilds it alone."""
    files = parallel_files(parallel, ("train",))
    if not files:
        return []
    judge = lid.run_model_path(run)
    held = {loc.uri: Input(loc.uri, file_sha256(loc.fs, loc.path)[0]) for _, loc in parallel_files(parallel, ("eval",))}
    ngram = ((read_record(run) or {}).get("langid") or {}).get("holdout_ngram", LangidParams().holdout_ngram)
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
                    "holdout_ngram": ngram if held else 0,
                },
                inputs={
                    "tokenizer": {TOKENIZER_FILE: tokenizer},
                    "set": {loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])},
                    "lid": {"model": Input(judge, lid.model_fingerprint(judge))},
                    "eval": held,
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
        held_out = {}
        for lang in langs:
            texts = df[lang].fill_null("")
            tag, eos = tok.token_to_id(lang_tag(lang)), tok.token_to_id(EOS)
            ids, n_tokens = tokenize(tok, texts.to_arrow(), tag, eos, ids_type)
            held = overlap.eval_ngrams(index, texts).to_numpy() > 0
            held_out[lang] = int(held.sum())
            columns[lang] = ids
            columns[f"ok_{lang}"] = pa.array(lid.detected(judge, texts.to_list(), lang) & (n_tokens > 2) & ~held)
            columns[f"h_{lang}"] = pa.array(stable_hashes(texts.to_arrow(), p["hash_seed"]))
        table = pa.table(columns)
        writer = FileWriter(aside.path(pair_file(p["set"])), table.schema)
        writer.write(table)
        writer.close()
        counts = {f"{a}-{b}": int(usable(table, a, b).sum()) for a, b in combinations(langs, 2)}
        return {"set": p["set"], "rows": df.height, "langs": langs, "usable_pairs": counts, "eval_overlap": held_out}

    return ensure(unit, build)
