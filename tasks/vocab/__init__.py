"""Aligned vocabulary: one byte-level BPE for every kept language, language tags, an alignment table, a report.

The stage is one unit whose output folder is the stage folder itself (``<run>/vocab``):
the tokenizer files ``AutoTokenizer.from_pretrained`` reads, ``alignment.parquet`` and
``report.json``. Its fingerprint covers the langid stage's fingerprint, the sha256 of
the parallel files (``train`` to learn translation pairs, ``eval`` only to measure),
an optional dictionary, the parameters and this code.

Training text is a temperature-sampled mix (XLM-R): with p_i each language's share of
*characters*, q_i = p_i^alpha / sum_j p_j^alpha. Language i's documents are kept
``rate_i = q_i * T / n_i`` times on average (T = total sampled characters): a document
is repeated ``floor(rate)`` times plus once more when a seeded hash of its ``doc_id``
falls below the fraction. The sample is therefore a function of (seed, doc_id) alone:
no global shuffle, no corpus in memory, the same inputs give the same tokenizer bytes.
Texts stream from Parquet record batches into ``train_from_iterator``.

CJK runs are cut into pieces of at most ``cjk_chunk`` characters before BPE, because
the byte-level regex keeps a whole unspaced Chinese clause as one "word" and the
trainer's word table then grows with the corpus (huggingface/tokenizers#1395).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from xlmflow.storage import (
    Aside,
    FileEntry,
    Location,
    RunDir,
    code_version,
    committed,
    file_sha256,
    load_output,
    partitions,
    read_batches,
    read_manifest,
    stable_uniform,
)
from xlmflow.tasks.common import progress
from xlmflow.tasks.common.parallel_sets import parallel_files
from xlmflow.tasks.common.runtime import Input, Ref, Unit, ensure, logger, plain_step, step
from xlmflow.tasks.common.specials import EOS, PAD, TOKENIZER_FILE, lang_tag, untagged
from xlmflow.tasks.vocab.params import VocabParams

STAGE = "vocab"
LANGID = "langid"
READS = (LANGID,)  # the stages whose committed output it reads
ALIGNMENT = "alignment.parquet"
REPORT = "report.json"
CJK_RUN = r"[\p{Han}\p{Hiragana}\p{Katakana}]"


# ---------------------------------------------------------------- planning
def plan(run: RunDir, params: VocabParams) -> Unit:
    """The one unit of the stage: fingerprinted by the langid stage, the parallel files and the dictionary."""
    langid = load_output(run.stage(LANGID), LANGID)
    if not partitions(langid, "clean"):
        raise ValueError(f"{run.stage(LANGID)}: no clean/lang=xx documents; the langid stage kept no language")
    inputs: dict[str, dict[str, Input]] = {"langid": {"stage": Input(run.stage(LANGID).uri, langid.fingerprint)}}
    for split, loc in parallel_files(params.parallel):
        inputs.setdefault(f"parallel_{split}", {})[loc.name] = Input(loc.uri, file_sha256(loc.fs, loc.path)[0])
    if params.dictionary:
        loc = Location.of(params.dictionary)
        if not loc.exists():
            raise ValueError(f"dictionary {params.dictionary!r}: no such file; give a TSV of src<TAB>tgt words")
        inputs["dictionary"] = {loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])}
    return Unit(
        stage=STAGE,
        name=STAGE,
        out=run.stage(STAGE).uri,
        code_version=code_version(__name__),
        params=params.fingerprinted(),
        inputs=inputs,
        options={"batch_rows": params.batch_rows},
    )


def inputs_of(unit: Unit, split: str) -> list[Location]:
    return [Location(i.uri) for _, i in unit.each(f"parallel_{split}")]


# ---------------------------------------------------------------- temperature sampling
def language_chars(stage: Location, files: dict[str, list[FileEntry]], batch_rows: int) -> dict[str, tuple[int, int]]:
    """(characters, documents) per language, streamed."""
    out = {}
    for lang, entries in files.items():
        chars = docs = 0
        for f in entries:
            for batch in read_batches(stage.child(f.path), ["text"], batch_rows):
                chars += int(pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0)
                docs += batch.num_rows
        out[lang] = (chars, docs)
    return out


def sampling_rates(chars: dict[str, int], alpha: float, sample_chars: int | None) -> dict[str, dict[str, float]]:
    """p_i (share of characters), q_i = p_i^alpha / sum p_j^alpha, and rate_i = q_i T / n_i (copies per document)."""
    langs = [lang for lang in sorted(chars) if chars[lang] > 0]
    n = np.array([chars[lang] for lang in langs], dtype=np.float64)
    p = n / n.sum()
    q = p**alpha / (p**alpha).sum()
    total = float(sample_chars or n.sum())
    rate = q * total / n
    return {lang: {"p": float(p[i]), "q": float(q[i]), "rate": float(rate[i])} for i, lang in enumerate(langs)}


def copies(ids: pa.Array | pa.ChunkedArray, rate: float, seed: int) -> np.ndarray:
    """How many times each document enters the sample: floor(rate), plus one with probability frac(rate)."""
    whole, frac = divmod(rate, 1.0)
    return (int(whole) + (stable_uniform(ids, seed) < frac)).astype(np.int64)


def sampled_texts(
    stage: Location,
    files: dict[str, list[FileEntry]],
    rates: dict[str, float],
    seed: int,
    batch_rows: int,
    tally: dict[str, dict[str, int]],
) -> Iterator[list[str]]:
    """Batches of training texts in a fixed order (languages sorted, files and batches in order); fills ``tally``."""
    for lang in sorted(rates):
        seen = tally.setdefault(lang, {"chars": 0, "docs": 0, "distinct_docs": 0})
        for f in files[lang]:
            for batch in read_batches(stage.child(f.path), ["doc_id", "text"], batch_rows):
                k = copies(batch.column("doc_id"), rates[lang], seed)
                if not k.any():
                    continue
                lengths = pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False)
                seen["chars"] += int((lengths * k).sum())
                seen["docs"] += int(k.sum())
                seen["distinct_docs"] += int((k > 0).sum())
                yield batch.column("text").take(pa.array(np.repeat(np.arange(len(k)), k))).to_pylist()


# ---------------------------------------------------------------- the tokenizer
def new_tokenizer(cjk_chunk: int) -> Tokenizer:
    """Byte-level BPE: NFC, (CJK pieces), GPT-2 byte-level pre-tokenizer and decoder; lossless after NFC."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if cjk_chunk:
        cut = pre_tokenizers.Split(Regex(f"{CJK_RUN}{{1,{cjk_chunk}}}"), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([cut, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def special_tokens(langs: list[str]) -> list[str]:
    return [EOS, PAD] + [lang_tag(lang) for lang in sorted(langs)]


def train_tokenizer(texts: Iterator[list[str]], langs: list[str], params: VocabParams) -> Tokenizer:
    tok = new_tokenizer(params.cjk_chunk)
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size,
        min_frequency=params.min_frequency,
        show_progress=False,
        special_tokens=special_tokens(langs),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, langs: list[str], aside: Aside) -> list[str]:
    """``save_pretrained`` into a local temp folder, then copy each file through the aside (any fsspec run dir)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[lang_tag(lang) for lang in sorted(langs)],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    with tempfile.TemporaryDirectory(prefix="xlmflow-vocab-") as tmp:
        fast.save_pretrained(tmp)
        names = sorted(p.name for p in Path(tmp).iterdir() if p.is_file())
        for name in names:
            with open(Path(tmp) / name, "rb") as src, aside.path(name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return names


# ---------------------------------------------------------------- the unit
def build_vocab(unit: Unit) -> Ref:
    """Sample, train, align, measure; commit tokenizer files, alignment.parquet and report.json as the stage."""
    from xlmflow.tasks.vocab import alignment, fairness

    params = VocabParams(**{k: v for k, v in unit.params.items() if k != "dictionary"}, **unit.options)
    langid_loc = Location(unit.input("langid").uri)

    def build(aside: Aside) -> dict:
        log = logger()
        manifest = load_output(langid_loc, LANGID)
        files = partitions(manifest, "clean")
        totals = language_chars(langid_loc, files, params.batch_rows)
        mix = sampling_rates({lang: c for lang, (c, _) in totals.items()}, params.alpha, params.sample_chars)
        langs = sorted(mix)
        tally: dict[str, dict[str, int]] = {}
        texts = sampled_texts(
            langid_loc, files, {lang: m["rate"] for lang, m in mix.items()}, params.seed, params.batch_rows, tally
        )
        tok = train_tokenizer(texts, langs, params)
        sampling = {
            lang: {
                "chars": totals[lang][0],
                "docs": totals[lang][1],
                **{k: round(v, 6) for k, v in mix[lang].items()},
                "sampled_chars": tally[lang]["chars"],
                "sampled_docs": tally[lang]["docs"],
                "sampled_distinct_docs": tally[lang]["distinct_docs"],
            }
            for lang in langs
        }
        for lang in langs:
            s = sampling[lang]
            log.info(
                "vocab sample %s: p=%.4f q=%.4f rate=%.3f -> %d chars, %d docs",
                lang,
                s["p"],
                s["q"],
                s["rate"],
                s["sampled_chars"],
                s["sampled_docs"],
            )
        names = save_tokenizer(tok, langs, aside)
        usage = fairness.language_usage(tok, langid_loc, files, params.report_docs, params.seed, params.batch_rows)
        dictionary = Location(unit.input("dictionary").uri) if "dictionary" in unit.inputs else None
        table, pairs = alignment.build_alignment(
            tok, usage, inputs_of(unit, "train"), dictionary, params.align_min_df, params.align_min_dice
        )
        alignment.write(aside.path(ALIGNMENT), table)
        report = fairness.report(tok, usage, table, pairs, inputs_of(unit, "eval"))
        report = {"params": unit.params, "sampling": sampling, **report}
        with aside.path(REPORT).open("wb") as f:
            f.write(
                orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
                + b"\n"
            )
        return {
            "languages": langs,
            "vocab_size": tok.get_vocab_size(),
            "files": names + [ALIGNMENT, REPORT],
            "sampled_chars": sum(s["sampled_chars"] for s in sampling.values()),
            "alignment_cross_pairs": report["alignment"]["cross_language_pairs"],
            "alignment_precision": report["alignment"]["precision"]["translation"]["hit_rate"]
            if "translation" in report["alignment"]["precision"]
            else None,
        }

    return ensure(unit, build)


def frozen(run: RunDir) -> Ref | None:
    """The committed vocabulary when it is whole: an incremental run keeps it (token ids stay comparable
    between nights; ``xlmflow vocab --force`` retrains it deliberately). None: nothing to keep."""
    loc = run.stage(STAGE)
    m = read_manifest(loc)
    if m is None or committed(loc, m.fingerprint) is None:
        return None
    return Ref(loc.uri, m.fingerprint)


def warn_untagged(run: RunDir) -> dict[str, int]:
    """Say which languages' clean documents the frozen tokenizer has no ``<lang:xx>`` tag for, and how many: the
    shard stage leaves them out (and counts them), since a new tag would change the vocabulary and every shard."""
    tok = Tokenizer.from_file(run.stage(STAGE).child(TOKENIZER_FILE).path)
    found = untagged(partitions(load_output(run.stage(LANGID), LANGID), "clean"), tok)
    for lang, n in found.items():
        text = (
            f"vocab: frozen, and language {lang!r} ({n} clean documents) has no <lang:{lang}> tag: its documents are "
            "left out of the shards (counted as untagged in shard/shards.json); `xlmflow vocab --force` retrains "
            "the vocabulary with it, and every shard is written again"
        )
        logger().warning(text)
        progress.note(text)
    return found


def read_report(ref: Ref) -> dict:
    with Location(ref.uri).child(REPORT).open("rb") as f:
        return json.loads(f.read())


# ---------------------------------------------------------------- Prefect tasks


plan_task = plain_step("vocab-plan")(plan)
vocab_task = step(name="vocab-build")(build_vocab)
