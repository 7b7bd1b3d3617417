"""Bits per byte that compare across tokenizers: sliding windows, the end of text in numerator and denominator,
bits per character, the unigram baseline, two models with different vocabularies, mismatched tokenizers.

Expected values are computed by hand: plain forward passes over windows written out, Python counters.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from shard_fixtures import corpus, tiny_tokenizer, train_tokenizer

from xlmflow.storage import Location, RunDir
from xlmflow.tasks import evaluate
from xlmflow.tasks.common import model as M
from xlmflow.tasks.evaluate import EvalParams, report_md
from xlmflow.tasks.evaluate import measures as E

SMALL = EvalParams(max_docs=3, prompts=1, gen_tokens=2)


def make_model(tok, langs: list[str], n_positions: int, seed: int = 0, vocab_size: int | None = None):
    """A randomly initialised tiny model whose tags and end of text are ``tok``'s."""
    torch.manual_seed(seed)
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<pad>")
    cfg = M.XlmGPT2Config(
        vocab_size=vocab_size or tok.get_vocab_size(),
        n_positions=n_positions,
        n_embd=32,
        n_layer=1,
        n_head=2,
        lang_token_ids=[tok.token_to_id(f"<lang:{x}>") for x in langs],
        langs=langs,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return M.XlmGPT2LMHeadModel(cfg).eval()


@torch.no_grad()
def logprobs(model, ids, lang_id: int = 1) -> torch.Tensor:
    """log p(ids[i + 1] | ids[: i + 1]) for every position of one window, by a plain forward pass."""
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
    logp = torch.log_softmax(model(x, lang_ids=torch.full_like(x, lang_id)).logits[0, :-1], -1)
    return logp.gather(1, x[0, 1:, None])[:, 0]


# ---------------------------------------------------------------- windows
@pytest.mark.parametrize("context", [2, 3, 8, 16])
def test_windows_score_each_token_once_with_half_a_context_before_it(context):
    for n in [2, 3, context - 1, context, context + 1, 2 * context + 3, 5 * context]:
        if n < 2:
            continue
        ids = np.arange(n) * 10  # ids encode their own position
        scored = []
        for window, first in E._windows(ids, context):
            assert 1 <= first < len(window) <= context
            start = int(window[0]) // 10
            assert np.array_equal(window, ids[start : start + len(window)])
            for j in range(first, len(window)):
                scored.append(start + j)
                assert j >= min(context // 2, start + j)  # left context: half a window, or all there is
        assert scored == list(range(1, n)), (n, context)


def test_bits_per_byte_by_hand_in_sliding_windows():
    """One 37-token document, context 16 (stride 8): windows [0, 16) scoring 1-15, [8, 24) scoring 16-23, [16, 32)
    scoring 24-31 and [21, 37) (the last ends at the end) scoring 32-36; a tag inside the text is never a target.
    The end of text is scored and is one byte and one character; bits per character share the numerator."""
    tok = tiny_tokenizer()
    model = make_model(tok, ["en", "fr"], n_positions=16)
    en, fr, eos = (tok.token_to_id(t) for t in ("<lang:en>", "<lang:fr>", "<|endoftext|>"))
    words = tok.encode("the cat sat on a mat and the dog ran far away from home " * 4, add_special_tokens=False).ids
    content = words[:20] + [fr] + words[20:34]
    doc = np.array([en, *content, eos])
    assert len(doc) == 37
    text = tok.decode(words[:20]) + tok.decode(words[20:34])  # what the bytes are counted on (any text works)
    logp = torch.cat([logprobs(model, doc[0:16]), logprobs(model, doc[8:24])[7:], logprobs(model, doc[16:32])[7:]])
    logp = torch.cat([logp, logprobs(model, doc[21:37])[10:]])  # targets 1..36, each once
    assert len(logp) == 36
    keep = torch.as_tensor(doc[1:] != fr)
    nll = -float(logp[keep].sum())
    short = np.array([en, *words[:5], eos])
    nll_short = -float(logprobs(model, short).sum())

    got = E.bits_per_byte(model, [doc, short], [text, tok.decode(words[:5])], lang_id=1, batch_size=3)
    n_bytes = len(text.encode()) + 1 + len(tok.decode(words[:5]).encode()) + 1
    n_chars = len(text) + 1 + len(tok.decode(words[:5])) + 1
    assert (got["targets"], got["bytes"], got["chars"], got["docs"]) == (35 + 6, n_bytes, n_chars, 2)
    assert got["windows"] == 5 and got["stride"] == 8
    assert got["nll_nats"] == pytest.approx(nll + nll_short, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx((nll + nll_short) / (math.log(2) * n_bytes), rel=1e-5)
    assert got["bits_per_char"] == pytest.approx((nll + nll_short) / (math.log(2) * n_chars), rel=1e-5)
    assert got["nats_per_token"] == pytest.approx((nll + nll_short) / 41, rel=1e-5)
    assert got["token_perplexity"] == pytest.approx(math.exp((nll + nll_short) / 41), rel=1e-5)

    with pytest.raises(ValueError, match=re.escape("not <lang:xx> ids <|endoftext|> in this model's 300 ids")):
        E.bits_per_byte(model, [np.array([en, 300, eos])], ["x"], lang_id=1)  # an id past the embedding table
    with pytest.raises(ValueError, match="not <lang:xx> ids"):
        E.bits_per_byte(model, [doc[:-1]], [text], lang_id=1)  # no end of text


def test_unigram_baseline_by_hand():
    """Add-one over every id but the tags, fitted on train counts; scored on the targets bits_per_byte scores."""
    tags, vocab = [3, 4], 8
    train = [np.array([3, 5, 5, 6, 0]), np.array([4, 5, 7, 0])]
    counts = sum(E.unigram_counts(d, vocab) for d in train)
    assert counts.tolist() == [2, 0, 0, 1, 1, 3, 1, 1]
    valid = [np.array([3, 5, 6, 1, 0]), np.array([4, 7, 3, 0])]  # a tag inside the second: not a target
    texts = ["abc", "é"]
    c = Counter(int(t) for d in train for t in d if t not in tags)
    total = sum(c.values()) + (vocab - len(tags))
    targets = [int(t) for d in valid for t in d[1:] if t not in tags]
    nll = -sum(math.log((c[t] + 1) / total) for t in targets)
    got = E.unigram_baseline(counts, valid, texts, tags)
    assert got["targets"] == len(targets) == 6
    assert (got["bytes"], got["chars"]) == (3 + 2 + 2, 3 + 1 + 2)
    assert got["nats_per_token"] == pytest.approx(nll / 6)
    assert got["bits_per_byte"] == pytest.approx(nll / (math.log(2) * 7))
    assert got["bits_per_char"] == pytest.approx(nll / (math.log(2) * 6))


# ---------------------------------------------------------------- two models, two tokenizers
def other_model_folder(path: Path, langs: list[str], vocab_size: int = 300, **kw) -> Path:
    """A model folder (config.json, model.safetensors, tokenizer.json) with its own byte-level BPE of
    ``vocab_size`` ids, trained on the fixture's corpus, and a random model; a context long enough to hold
    every fixture document in one window."""
    rows = kw.pop("rows", None)
    tok, _ = train_tokenizer(corpus({"en": 120, "fr": 80, "zh": 40}), vocab_size=vocab_size, **kw)
    model = make_model(tok, langs, n_positions=128, seed=1, vocab_size=rows)
    model.save_pretrained(path, safe_serialization=True)
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def base_run(train_inputs, tmp_path_factory) -> Path:
    """conftest's ``train_inputs`` (langid, vocab, shard stages) with a random model of the run's tokenizer as
    its train folder (context 32: longer documents take several windows). Copy it to write."""
    from tokenizers import Tokenizer

    root, _ = train_inputs
    run_dir = tmp_path_factory.mktemp("bpb") / "run"
    shutil.copytree(root, run_dir)
    tok = Tokenizer.from_file(str(run_dir / "vocab" / "tokenizer.json"))
    make_model(tok, ["en", "fr", "zh"], n_positions=32).save_pretrained(run_dir / "train", safe_serialization=True)
    shutil.copy(run_dir / "vocab" / "tokenizer.json", run_dir / "train" / "tokenizer.json")
    return run_dir


def run_units(run_dir: Path, params: EvalParams) -> tuple[dict, dict]:
    """(each lm unit's metrics by model, the stage's metrics.json)."""
    run = RunDir.of(str(run_dir))
    lms, sets, _ = evaluate.plan(run, params)
    refs = [evaluate.lm_unit(u) for u in lms] + [evaluate.set_unit(u) for u in sets]
    units = {}
    for r in refs[: len(lms)]:
        part = json.loads((Path(Location(r.uri).path) / "metrics.json").read_text())
        units[part["model"]] = part
    evaluate.commit_evaluation(evaluate.stage_for(run, params, refs), refs)
    return units, json.loads((run_dir / "evaluate" / "metrics.json").read_text())


def valid_texts(run_dir: Path, lang: str, n: int) -> tuple[list[list[int]], list[str]]:
    """The first ``n`` valid documents of ``lang`` as the shard stage wrote them, and their text (langid's)."""
    from tokenizers import Tokenizer

    files = sorted((run_dir / "shard" / "valid").glob(f"{lang}-*/*.parquet"))
    docs = pl.concat([pl.read_parquet(f, columns=["doc_id", "input_ids"]) for f in files]).head(n)
    clean = pl.concat(pl.read_parquet(f) for f in (run_dir / "langid" / "clean").glob(f"lang={lang}/*.parquet"))
    text = dict(clean.select("doc_id", "text").rows())
    run_tok = Tokenizer.from_file(str(run_dir / "vocab" / "tokenizer.json"))
    ids = docs["input_ids"].to_list()
    assert [run_tok.decode(d[1:-1]) for d in ids] == [text[i] for i in docs["doc_id"]]  # the round trip is exact
    return ids, [text[i] for i in docs["doc_id"]]


def test_two_models_with_different_tokenizers(base_run, tmp_path):
    from tokenizers import Tokenizer

    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    other = other_model_folder(tmp_path / "other", ["en", "fr", "zh"])
    run_tok = Tokenizer.from_file(str(run_dir / "vocab" / "tokenizer.json"))
    other_tok = Tokenizer.from_file(str(other / "tokenizer.json"))
    assert other_tok.get_vocab_size() == 300 != run_tok.get_vocab_size()
    units, m = run_units(run_dir, SMALL.model_copy(update={"models": [str(run_dir), str(other)]}))
    assert sorted(m["models"]) == ["other", "run/train"]
    assert m["bits_per_byte"] == m["models"]["run/train"]["bits_per_byte"]

    # the other model by hand: the run's valid text, encoded by its own tokenizer, one window per document
    model = M.XlmGPT2LMHeadModel.from_pretrained(other, use_safetensors=True).eval()
    for lang_id, lang in enumerate(["en", "fr", "zh"], start=1):
        run_ids, texts = valid_texts(run_dir, lang, SMALL.max_docs)
        tag, eos = other_tok.token_to_id(f"<lang:{lang}>"), other_tok.token_to_id("<|endoftext|>")
        docs = [[tag, *other_tok.encode(t, add_special_tokens=False).ids, eos] for t in texts]
        assert docs != run_ids  # another vocabulary: other ids
        nll = -sum(float(logprobs(model, d, lang_id).sum()) for d in docs)
        n_bytes = sum(len(t.encode()) + 1 for t in texts)
        detail = units["other"]["bpb_detail"][lang]
        assert detail["targets"] == sum(len(d) - 1 for d in docs) and detail["roundtrip_mismatches"] == 0
        assert m["models"]["other"]["bits_per_byte"][lang] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-4)
        n_chars = sum(len(t) + 1 for t in texts)
        assert m["models"]["other"]["bits_per_char"][lang] == pytest.approx(nll / (math.log(2) * n_chars), rel=1e-4)
        # both models are scored on the same text: the same bytes and characters, other tokens
        assert (units["run/train"]["bpb_detail"][lang]["bytes"], units["run/train"]["bpb_detail"][lang]["chars"]) == (
            n_bytes,
            n_chars,
        )
        assert units["run/train"]["bpb_detail"][lang]["targets"] == sum(len(d) - 1 for d in run_ids)
        again = E.encode_docs(run_tok, texts, run_ids[0][0], run_ids[0][-1])  # the run's model: the shards' ids
        assert [d.tolist() for d in again] == run_ids

        # the unigram baseline: the run's train shards and tokens, the same for both models, by hand
        files = sorted((run_dir / "shard" / "train").glob(f"{lang}-*/*.parquet"))
        tags = {run_tok.token_to_id(f"<lang:{x}>") for x in ("en", "fr", "zh")}
        c = Counter(t for f in files for d in pl.read_parquet(f)["input_ids"].to_list() for t in d if t not in tags)
        total = sum(c.values()) + run_tok.get_vocab_size() - len(tags)
        targets = [t for d in run_ids for t in d[1:] if t not in tags]
        uni = -sum(math.log((c[t] + 1) / total) for t in targets)
        base = m["models"]["run/train"]["unigram_baseline"][lang]
        assert base == m["models"]["other"]["unigram_baseline"][lang]
        assert base["bits_per_byte"] == pytest.approx(uni / (math.log(2) * n_bytes), rel=1e-6)
        assert base["nats_per_token"] == pytest.approx(uni / len(targets), rel=1e-6)
        for name in ("run/train", "other"):
            mm = m["models"][name]
            assert mm["beats_unigram"][lang] == (mm["bits_per_byte"][lang] < base["bits_per_byte"])
        assert m["models"]["other"]["beats_unigram"][lang] is False  # a random model knows less than frequencies

    cmp = m["comparison"]
    assert cmp["bits_per_byte"]["fr"]["other-run/train"] == pytest.approx(
        cmp["bits_per_byte"]["fr"]["other"] - m["bits_per_byte"]["fr"]
    )
    assert set(cmp["bits_per_char"]["en"]) == {"run/train", "other", "other-run/train"}
    assert cmp["beats_unigram"]["zh"] == {"run/train": m["beats_unigram"]["zh"], "other": False}
    text = (run_dir / "evaluate" / "report.md").read_text()
    head = "| language | unigram BPB | unigram nats/token | run/train BPB | run/train BPC | run/train beats unigram |"
    assert head in text
    zh = m["models"]["other"]["bits_per_byte"]["zh"]
    assert f"| {m['unigram_baseline']['zh']['bits_per_byte']:.3f} |" in text and f"| {zh:.3f} | " in text


def test_a_tokenizer_that_is_not_the_models_is_an_error(base_run, tmp_path):
    """More ids than embedding rows, or tags at other ids: planning stops naming the model, and so does the unit
    (a folder changed after planning)."""
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    langs = ["en", "fr", "zh"]
    small = other_model_folder(tmp_path / "small", langs, rows=200)  # a 300-id tokenizer, 200 embedding rows
    with pytest.raises(ValueError, match=r"small.*tokenizer has 300 ids but the model's embedding table 200 rows"):
        evaluate.plan(RunDir.of(str(run_dir)), SMALL.model_copy(update={"models": [str(small)]}))
    shuffled = other_model_folder(tmp_path / "shuffled", langs, tag_langs=["zh", "fr", "en", "de"])
    config = json.loads((shuffled / "config.json").read_text())
    config["lang_token_ids"] = [2, 3, 4]  # the ids of <lang:de>, <lang:en>, <lang:fr> in this tokenizer
    (shuffled / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"language tags are not the model's .*<lang:en> 3 vs 2"):
        evaluate.plan(RunDir.of(str(run_dir)), SMALL.model_copy(update={"models": [str(shuffled)]}))

    good = other_model_folder(tmp_path / "good", langs)
    lms, _, _ = evaluate.plan(RunDir.of(str(run_dir)), SMALL.model_copy(update={"models": [str(good)]}))
    shutil.copy(run_dir / "vocab" / "tokenizer.json", good / "tokenizer.json")  # 400 ids for 300 rows, after planning
    with pytest.raises(ValueError, match=r"model good .*400 ids but the model's embedding table 300 rows"):
        evaluate.lm_unit(lms[0])


def test_report_section_shows_the_baseline_and_fertility_per_character():
    metrics = {
        "bits_per_byte": {"en": 2.0, "zh": 3.0},
        "tokenizer": {
            "en": {"fertility": 1.3, "fertility_unit": "tokens per word"},
            "zh": {"fertility": 0.8, "fertility_unit": "tokens per character"},
        },
        "models": {
            "a": {
                "bits_per_byte": {"en": 2.0, "zh": 3.0},
                "bits_per_char": {"en": 1.9, "zh": 6.0},
                "token_perplexity": {"en": math.e**2, "zh": math.e**4},
                "unigram_baseline": {
                    "en": {"bits_per_byte": 2.5, "nats_per_token": 4.0},
                    "zh": {"bits_per_byte": 2.75, "nats_per_token": 5.0},
                },
                "beats_unigram": {"en": True, "zh": False},
                "generation_language_rate": {"en": 0.5},
            }
        },
    }
    lines = report_md._bits_per_byte_section(metrics, ["a"])
    assert "| en | 2.500 | 4.000 | 2.000 | 1.900 | yes | 2.000 | 0.50 | 1.30 |" in lines[6]
    assert "| zh | 2.750 | 5.000 | 3.000 | 6.000 | **no** | 4.000 | n/a | 0.80 /char |" in lines[7]
