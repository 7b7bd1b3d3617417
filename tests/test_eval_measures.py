"""Tests for tasks/evaluate/measures.py and embeddings.py (tiny tokenizer and model, CPU only, no network).

Expected values are computed by hand (plain forward passes, Python sets, explicit sums) wherever possible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shard_fixtures import TAGS, tiny_tokenizer

from xlmflow.tasks.common import model as M
from xlmflow.tasks.common.ngrams import NgramIndex
from xlmflow.tasks.evaluate import embeddings
from xlmflow.tasks.evaluate import measures as E


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_model(tok, n_positions: int = 16, seed: int = 0) -> M.XlmGPT2LMHeadModel:
    torch.manual_seed(seed)
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<pad>")
    cfg = M.XlmGPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        lang_token_ids=[tok.token_to_id(t) for t in TAGS],
        langs=["en", "fr"],
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return M.XlmGPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok)


def doc(tok, *parts: str) -> np.ndarray:
    """``<lang:en> text <|endoftext|>``; a part that is a tag is inserted as the tag token."""
    ids = [tok.token_to_id("<lang:en>")]
    for p in parts:
        ids += [tok.token_to_id(p)] if p in TAGS else tok.encode(p, add_special_tokens=False).ids
    return np.array(ids + [tok.token_to_id("<|endoftext|>")])


def test_embed(tok, model):
    texts = ["the cat sat", "", "le chien court loin de la maison et le chat est sur le tapis " * 3]
    tag = tok.token_to_id("<lang:en>")
    got = embeddings.embed(model, tok, texts, tag, 1, batch_size=2)
    assert got.shape == (3, 3, 32) and got.dtype == np.float32
    norms = np.linalg.norm(got, axis=-1)
    assert np.allclose(norms[:, [0, 2]], 1, atol=1e-5) and np.all(norms[:, 1] == 0)
    alone = embeddings.embed(model, tok, texts[:1], tag, 1)
    assert np.allclose(alone[:, 0], got[:, 0], atol=1e-5)  # padding next to a longer text changes nothing
    # layer 0 by hand: token + position + language embeddings, averaged over the text tokens (not the tag)
    ids = torch.tensor([tag, *tok.encode(texts[0], add_special_tokens=False).ids])
    with torch.no_grad():
        h = model.transformer.wte.weight[ids] + model.transformer.wpe.weight[: len(ids)]
        h = (h + model.lang_embeddings.weight[1])[1:].mean(0)
    assert np.allclose(got[0, 0], (h / h.norm()).numpy(), atol=1e-5)
    cut = tok.encode(texts[2], add_special_tokens=False).ids[:15]  # cut to the context
    assert np.allclose(got[:, 2], embeddings.embed(model, tok, [tok.decode(cut)], tag, 1)[:, 0], atol=1e-5)


def test_retrieval_accuracy():
    a = np.eye(4, dtype=np.float32)[None].repeat(2, 0)
    b = a.copy()
    b[1] = b[1][[1, 0, 2, 3]]  # layer 1: two segments swapped
    assert np.allclose(embeddings.retrieval_accuracy(a, b), [[1, 1], [0.5, 0.5]])
    c = np.eye(3, dtype=np.float32)[None]
    tied = c[:, [0, 0, 2]]  # b0 == b1: a0 ties between them and takes b0; a1 ties everywhere and takes b0
    assert np.allclose(embeddings.retrieval_accuracy(c, tied), [[2 / 3, 2 / 3]])
    rng = np.random.default_rng(0)  # noisy pairs: both directions by a plain loop
    a = rng.normal(size=(2, 6, 4))
    b = a + rng.normal(scale=1.5, size=a.shape)
    a, b = a / np.linalg.norm(a, axis=-1, keepdims=True), b / np.linalg.norm(b, axis=-1, keepdims=True)
    loop = [
        [np.mean([np.argmax([x @ y for y in q[l]]) == i for i, x in enumerate(p[l])]) for p, q in ((a, b), (b, a))]
        for l in range(2)
    ]
    assert not np.allclose(np.array(loop)[:, 0], np.array(loop)[:, 1])  # the directions differ here
    assert np.allclose(embeddings.retrieval_accuracy(a, b), loop)


def test_probe_accuracy():
    rng = np.random.default_rng(0)
    y = ["pos"] * 120 + ["neg"] * 80
    centre = np.where(np.array(y)[:, None] == "pos", 2.0, -2.0) * np.r_[1, 1, np.zeros(6)]
    x = centre + rng.normal(size=(200, 8))
    yt = ["pos"] * 30 + ["neg"] * 70
    xt = np.where(np.array(yt)[:, None] == "pos", 2.0, -2.0) * np.r_[1, 1, np.zeros(6)] + rng.normal(size=(100, 8))
    tests = {"fr": (xt + 0.3, yt), "xx": (xt, ["new"] * 50 + yt[50:]), "none": (xt[:0], [])}
    got = embeddings.probe_accuracy(x, y, tests)
    assert got["classes"] == 2 and got["train_accuracy"] > 0.95
    assert got["accuracy"]["fr"] > 0.9
    assert got["majority_baseline"] == {"fr": 0.3, "xx": 0.0, "none": 0.0}  # "pos" is the train majority
    assert 0.4 < got["accuracy"]["xx"] <= 0.5  # the unseen half is wrong whatever is predicted


def test_generate(tok, model):
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<pad>")
    prompts = [doc(tok, "the cat")[:-1].tolist(), doc(tok, "le chien court")[:-1].tolist()]
    greedy = E.generate(model, tok, prompts, 6, sample=False)
    assert greedy == E.generate(model, tok, prompts, 6, sample=False)
    for p, g in zip(prompts, greedy, strict=True):
        out = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=6, eos_token_id=eos, pad_token_id=pad)
        assert g == tok.decode(out[0, len(p) :].tolist(), skip_special_tokens=True)
    sampled = E.generate(model, tok, prompts, 6, sample=True, seed=3)
    assert sampled == E.generate(model, tok, prompts, 6, sample=True, seed=3)
    assert not any("<lang:" in t for t in greedy + sampled)


def test_language_rate():
    from xlmflow.tasks.langid import lid

    lid_model = lid.load_model(lid.model_file(None))
    en = ["The weather is lovely today and we are going to the park.", "I would like a cup of coffee, please."]
    fr = ["Il fait très beau aujourd'hui et nous allons au parc.", "Je voudrais une tasse de café, s'il vous plaît."]
    assert E.language_rate(lid_model, en, "en") == 1.0
    assert E.language_rate(lid_model, fr, "en") == 0.0
    assert E.language_rate(lid_model, fr, "fr") == 1.0
    assert E.language_rate(lid_model, [*en, "I 2"], "en") == pytest.approx(2 / 3)  # < 3 letters: a miss
    assert E.language_rate(lid_model, [], "en") == 0.0


def test_translate(tok):
    model = make_model(tok, n_positions=64)
    en, fr, eos = tok.token_to_id("<lang:en>"), tok.token_to_id("<lang:fr>"), tok.token_to_id("<|endoftext|>")
    (word,) = tok.encode(" the", add_special_tokens=False).ids  # one token, decoded with its space
    prompts, calls = [], []

    def steer(module, args, kwargs, output):
        """After the target tag emit `` the``, then EOS: the greedy answer is known."""
        ids = kwargs["input_ids"]
        calls.append(ids.shape[1])
        if ids.shape[1] > 1:
            prompts.append(ids[0].tolist())
        logits = torch.zeros_like(output.logits[:, -1])
        logits[:, word if ids[0, -1] == fr else eos] = 100.0
        output.logits[:, -1] = logits
        return output

    def enc(t):
        return tok.encode(t, add_special_tokens=False).ids

    model.generation_config.eos_token_id = None  # only translate's own eos_token_id can stop it
    handle = model.register_forward_hook(steer, with_kwargs=True)
    try:
        hyps, fmt = E.translate(model, tok, [("the cat", "le chat")], ["the dog", "a mat"], "en", "fr", 8)
    finally:
        handle.remove()
    assert hyps == ["the"] * 2
    assert calls == [len(prompts[0]), 1, len(prompts[1]), 1]  # the word, then EOS ends each generation
    assert prompts[0] == [en, *enc("the cat"), eos, fr, *enc("le chat"), eos, en, *enc("the dog"), eos, fr]
    assert "<lang:en>" in fmt and "<lang:fr>" in fmt and "x1" in fmt

    small = make_model(tok)  # 16 positions: the shots no longer fit and are dropped
    hyps, fmt = E.translate(
        small, tok, [("the cat sat on a mat", "le chat est sur le tapis")] * 3, ["the dog"], "en", "fr"
    )
    assert len(hyps) == 1 and "<|endoftext|>" not in hyps[0] and "x0" in fmt


def test_chrf_bleu():
    refs = ["the cat sat on the mat today", "a dog ran far away from home"]
    same = E.chrf_bleu(refs, refs, "en")
    assert same["chrf"] == pytest.approx(100) and same["bleu"] == pytest.approx(100) and same["segments"] == 2
    assert E.chrf_bleu(["xyz qqq", "kkk"], refs, "en")["chrf"] < 5
    hyp, ref = ["我喜欢我的猫和狗"], ["我喜欢我的猫和鱼"]
    assert E.chrf_bleu(hyp, ref, "en")["bleu"] == 0  # 13a: one unspaced "word", which differs
    assert E.chrf_bleu(hyp, ref, "zh")["bleu"] > 30  # zh tokenizer: characters of Han text
    assert E.chrf_bleu(hyp, ref, "ja")["bleu"] > 30  # char tokenizer (no MeCab)


def ngrams(docs, n=13) -> set[tuple]:
    return {tuple(d[i : i + n]) for d in docs for i in range(len(d) - n + 1)}


def test_ngram_index():
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(0, 5000, size=k) for k in (30, 20, 12))
    indexed = [a, b, c, a]  # a twice: dedup; c is shorter than n
    flat, starts = np.concatenate(indexed), np.cumsum([0, 30, 20, 12])
    whole = NgramIndex(13)
    whole.add(flat, starts)
    chunked = NgramIndex(13)
    chunked.add(np.concatenate([a, b]), np.array([0, 30]))  # same stream, cut at a document boundary
    chunked.add(np.concatenate([c, a]), np.array([0, 12]))
    assert whole.size == chunked.size == len(ngrams(indexed)) == 18 + 8

    filler = np.arange(10_000, 10_020)
    queries = [
        np.concatenate([filler[:5], a[5:18], filler[5:]]),  # shares a 13-gram with a
        np.concatenate([a[-6:], b[:7]]),  # spans the a|b boundary of the stream
        a[5:18][::-1],  # the same tokens in another order
        a[:12],  # shorter than n
        c,  # indexed but shorter than n
        b,
        filler,
        np.array([], dtype=np.int64),
    ]
    expected = [bool(ngrams([q]) & ngrams(indexed)) for q in queries]
    assert expected == [True, False, False, False, False, True, False, False]
    assert whole.hits(queries).tolist() == expected
    assert chunked.hits(queries).tolist() == expected
    assert NgramIndex(13).hits(queries).tolist() == [False] * len(queries)  # empty index
