"""Evaluation measures: plain functions over a model, a tokenizer and arrays; the evaluation stage decides what
to measure on which data. ``tok`` is the vocab stage's raw tokenizer; texts are encoded without special tokens,
as the shard stage does, so a document is ``<lang:xx> text-ids <|endoftext|>``."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from tokenizers import Tokenizer
from torch.nn.utils.rnn import pad_sequence

from xlmflow.tasks.common.specials import EOS, PAD, lang_tag
from xlmflow.tasks.langid import lid
from xlmflow.tasks.langid.quality import KANA

_PROBE_L2 = 1e-3  # weight decay of the transfer probe (per-sample mean loss + L2 * |W|^2)


def _pad(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, L] ids (pad id 0: causal attention never lets a real position see it) and the mask."""
    ids = pad_sequence([torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in seqs], batch_first=True)
    return ids, torch.arange(ids.shape[1]) < torch.tensor([len(s) for s in seqs])[:, None]


def _windows(ids: np.ndarray, context: int) -> list[np.ndarray]:
    """Windows of ``context`` tokens overlapping by one: each window's first token is the previous one's last
    target, so every token but the document's first is predicted exactly once, with as much left context as a
    fixed grid allows (a sliding window would be fairer but costs one forward pass per token)."""
    return [ids[s : s + context] for s in range(0, len(ids) - 1, context - 1)]


@torch.no_grad()
def bits_per_byte(model, tok: Tokenizer, docs: list[np.ndarray], lang_id: int, batch_size: int = 16) -> dict:
    """Bits per UTF-8 byte of held-out documents: comparable across tokenizers and languages, unlike perplexity.

    Targets are every token after the first except tags (inputs only, as in training); EOS is a target, since
    the model must learn where a document ends. Bytes are those of the text alone (tags and EOS excluded).
    """
    model.eval()
    tags = torch.as_tensor(list(model.config.lang_token_ids), dtype=torch.long, device=model.device)
    windows = [w for d in docs for w in _windows(np.asarray(d), model.config.n_positions)]
    windows.sort(key=len)  # similar lengths share a batch: less padding
    nll, targets = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids, mask = (t.to(model.device) for t in _pad(windows[start : start + batch_size]))
        labels = ids.masked_fill(~mask | torch.isin(ids, tags), -100)[:, 1:]  # padding and tags: no target
        logits = model(ids, lang_ids=torch.full_like(ids, lang_id)).logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
        targets += int((labels != -100).sum())
    n_bytes = sum(len(tok.decode([int(i) for i in d[1:-1]]).encode()) for d in docs)
    bpb = nll / (math.log(2) * n_bytes) if n_bytes else float("nan")
    ppl = math.exp(nll / targets) if targets else float("nan")
    return dict(bits_per_byte=bpb, token_perplexity=ppl, nll_nats=nll, targets=targets, bytes=n_bytes, docs=len(docs))


@torch.no_grad()
def embed(model, tok: Tokenizer, texts: list[str], tag_id: int, lang_id: int, batch_size: int = 32) -> np.ndarray:
    """Mean-pooled, L2-normalised hidden states of every layer, [n_layer + 1, len(texts), n_embd].

    Every layer, because where cross-lingual alignment peaks is the question. The tag is fed (the model never
    sees untagged text in training) but left out of the mean: it is the same in every text of a language and
    would pull all of them towards one point.
    """
    model.eval()
    cfg = model.config
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    seqs = [[tag_id, *e.ids[: cfg.n_positions - 1]] for e in encodings]
    out = np.zeros((cfg.n_layer + 1, len(texts), cfg.n_embd), dtype=np.float32)
    for start in range(0, len(seqs), batch_size):
        ids, mask = _pad(seqs[start : start + batch_size])
        mask[:, 0] = False  # the tag
        ids = ids.to(model.device)
        outputs = model(ids, lang_ids=torch.full_like(ids, lang_id), output_hidden_states=True)
        hidden = torch.stack(outputs.hidden_states)  # [n_layer + 1, B, L, H]
        weights = mask.to(hidden.device, hidden.dtype)[None, :, :, None]
        pooled = (hidden * weights).sum(2) / weights.sum(2).clamp(min=1)
        out[:, start : start + len(ids)] = F.normalize(pooled.float(), dim=-1).cpu().numpy()  # zero stays zero
    return out


def retrieval_accuracy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Accuracy@1 of nearest-neighbour retrieval of aligned segments, [layers, 2] for a->b and b->a.

    The inputs are normalised, so the dot product is the cosine; argmax breaks ties by the lowest index.
    """
    sims = np.einsum("lnh,lmh->lnm", a, b)
    gold = np.arange(a.shape[1])
    a_to_b = (sims.argmax(axis=2) == gold).mean(axis=1)
    b_to_a = (sims.argmax(axis=1) == gold).mean(axis=1)
    return np.stack([a_to_b, b_to_a], axis=1)


def probe_accuracy(
    train_x: np.ndarray, train_y: list[str], tests: dict[str, tuple[np.ndarray, list[str]]], seed: int = 0
) -> dict:
    """Zero-shot cross-lingual transfer: a logistic-regression probe fitted on one language, scored on others.

    A linear probe measures what the representation makes linearly available, not what a classifier could
    learn. Features are standardised with the train statistics only, as the test languages are unseen.
    """
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    x = torch.as_tensor(train_x, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    y = torch.as_tensor([index[c] for c in train_y])
    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(len(classes), x.shape[1], generator=gen)).requires_grad_()
    bias = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + _PROBE_L2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)

    def share(hits: list[bool]) -> float:
        return sum(hits) / len(hits) if hits else 0.0

    def accuracy(feats: np.ndarray, labels: list[str]) -> float:
        with torch.no_grad():
            pred = ((torch.as_tensor(feats, dtype=torch.float32) - mean) / std @ weight.T + bias).argmax(1).tolist()
        gold = [index.get(c, -1) for c in labels]  # an unseen label is -1: never predicted
        return share([p == g for p, g in zip(pred, gold, strict=True)])

    counts = Counter(train_y)
    majority = max(classes, key=lambda c: (counts[c], -index[c]))  # ties: the first class in sorted order
    return {
        "train_accuracy": accuracy(train_x, train_y),
        "classes": len(classes),
        "majority_baseline": {lang: share([c == majority for c in labels]) for lang, (_, labels) in tests.items()},
        "accuracy": {lang: accuracy(feats, labels) for lang, (feats, labels) in tests.items()},
    }


@torch.no_grad()
def _continue(model, tok: Tokenizer, prompt: list[int], max_new_tokens: int, **kwargs) -> str:
    """Decoded new tokens of one prompt (special tokens skipped), with the model's own generation config (it
    suppresses tags); no more new tokens than the context has room for (GPT-2 has no positions beyond it)."""
    ids = torch.tensor([prompt], dtype=torch.long, device=model.device)
    new = min(max_new_tokens, model.config.n_positions - len(prompt))
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, eos_token_id=eos, pad_token_id=pad, **kwargs
    )
    return tok.decode(out[0, len(prompt) :].tolist(), skip_special_tokens=True)


def generate(
    model, tok: Tokenizer, prompts: list[list[int]], max_new_tokens: int, sample: bool, seed: int = 0
) -> list[str]:
    """Continuations of tagged prompts, greedy or sampled (T=0.8, top-k 50), reproducible through ``seed``."""
    model.eval()
    kwargs = {"do_sample": True, "temperature": 0.8, "top_k": 50} if sample else {"do_sample": False}
    torch.manual_seed(seed)
    return [_continue(model, tok, list(p), max_new_tokens, **kwargs) for p in prompts]


def language_rate(lid_model, texts: list[str], lang: str) -> float:
    """Share of texts fastText labels ``lang``: does the model write the language its tag asks for?

    Texts with fewer than 3 letters say nothing about a language and count as misses (a model that emits
    only punctuation must not score well). As in the langid stage, a ``ja`` label without kana means ``zh``.
    """
    if not texts:
        return 0.0
    series = pl.Series(texts, dtype=pl.String)
    top = pl.from_arrow(lid.predict(lid_model, series, 1, 4096)[0]).list.first()
    ja_as_zh = (top == "ja") & ~series.str.contains(KANA)  # as the langid stage decides
    label = top.zip_with(~ja_as_zh, pl.Series(["zh"] * len(top)))
    hit = (label == lang).fill_null(False) & (series.str.count_matches(r"\p{L}") >= 3)
    return float(hit.mean())


def translate(
    model,
    tok: Tokenizer,
    shots: list[tuple[str, str]],
    sources: list[str],
    src: str,
    tgt: str,
    max_new_tokens: int = 64,
) -> tuple[list[str], str]:
    """Few-shot translation prompted in the training format, so an untuned LM can be asked at all.

    Each pair is two documents in a row, source then target; the prompt ends with the target tag, and greedy
    generation stops at EOS. Too long a prompt loses its oldest shots first, then the start of the source
    (keeping its tag). Languages are derived by the model from the tags.
    """
    model.eval()
    eos = tok.token_to_id(EOS)
    src_tag, tgt_tag = tok.token_to_id(lang_tag(src)), tok.token_to_id(lang_tag(tgt))
    pairs = [[e.ids for e in tok.encode_batch(list(pair), add_special_tokens=False)] for pair in shots]
    shot_ids = [[src_tag, *s, eos, tgt_tag, *t, eos] for s, t in pairs]
    budget = max(model.config.n_positions - max_new_tokens, model.config.n_positions // 2)  # room for the answer
    hyps, kept = [], []
    for source in tok.encode_batch(sources, add_special_tokens=False):
        query = [src_tag, *source.ids, eos, tgt_tag]
        first = 0
        while first < len(shot_ids) and sum(map(len, shot_ids[first:])) + len(query) > budget:
            first += 1
        if len(query) > budget:
            query = [src_tag, *query[len(query) - budget + 1 :]]
        prompt = [t for shot in shot_ids[first:] for t in shot] + query
        kept.append(len(shot_ids) - first)
        hyps.append(_continue(model, tok, prompt, max_new_tokens, do_sample=False).strip())
    s, t = lang_tag(src), lang_tag(tgt)
    n = "-".join(map(str, sorted({min(kept), max(kept)}))) if kept else str(len(shots))  # shots kept: "2" or "1-3"
    fmt = f"{s}{{source}}{EOS}{t}{{translation}}{EOS} x{n}, then {s}{{source}}{EOS}{t} -> greedy until {EOS}"
    return hyps, fmt


def chrf_bleu(hyps: list[str], refs: list[str], tgt: str) -> dict:
    """Corpus chrF++ and BLEU (sacrebleu). chrF++ works on characters, so it is fair to unspaced scripts;
    BLEU needs words: the zh tokenizer for Chinese, characters for Japanese (no MeCab here), else 13a."""
    from sacrebleu.metrics import BLEU, CHRF

    tokenize = {"zh": "zh", "ja": "char"}.get(tgt, "13a")
    chrf = CHRF(word_order=2).corpus_score(hyps, [refs]).score
    bleu = BLEU(tokenize=tokenize).corpus_score(hyps, [refs]).score
    return {"chrf": float(chrf), "bleu": float(bleu), "segments": len(hyps)}


_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial hash


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial's bits so nearby n-grams do not share low bits."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _ngram_hashes(flat: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-token windows inside one document each, and the index of that document."""
    starts = np.asarray(starts, dtype=np.int64)
    if len(flat) < n or len(starts) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    windows = sliding_window_view(np.asarray(flat).astype(np.uint64), n)
    h = np.zeros(len(windows), np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        for j in range(n):
            h = h * _MUL + windows[:, j] + np.uint64(1)
        h = _mix(h)
    first = np.arange(len(windows))
    doc = np.searchsorted(starts, first, side="right") - 1
    inside = (doc >= 0) & (doc == np.searchsorted(starts, first + n - 1, side="right") - 1)
    return h[inside], doc[inside]


class NgramIndex:
    """Hashed n-grams of the training stream, to flag eval documents that occur (in part) in training data.

    Only n-grams inside one document count: the stream's document order is an artefact of shuffling, so an
    n-gram across a boundary is not training text. 64-bit hashes make false hits negligible.
    """

    def __init__(self, n: int = 13):
        self.n = n
        self._parts: list[np.ndarray] = []
        self._sorted = np.zeros(0, np.uint64)

    def add(self, flat_ids: np.ndarray, doc_starts: np.ndarray) -> None:
        """Index whole documents: ``flat_ids`` concatenated, ``doc_starts`` each one's offset (ascending)."""
        hashes, _ = _ngram_hashes(flat_ids, doc_starts, self.n)
        self._parts.append(np.unique(hashes))

    def freeze(self) -> None:
        """Sort and deduplicate everything added so far (``hits`` and ``size`` call it when needed)."""
        if self._parts:
            self._sorted, self._parts = np.unique(np.concatenate([self._sorted, *self._parts])), []

    def hits(self, docs: list[np.ndarray]) -> np.ndarray:
        """One bool per document: it shares at least one n-gram with the index."""
        self.freeze()
        if not docs:
            return np.zeros(0, dtype=bool)
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
        hashes, doc = _ngram_hashes(np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]), starts, self.n)
        pos = np.searchsorted(self._sorted, hashes)
        found = pos < len(self._sorted)
        found[found] = self._sorted[pos[found]] == hashes[found]
        return np.bincount(doc[found], minlength=len(docs)) > 0

    @property
    def size(self) -> int:
        """Distinct n-grams indexed."""
        self.freeze()
        return len(self._sorted)
