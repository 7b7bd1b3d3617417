"""Language-model measures: bits per byte (beside a unigram baseline), generation and few-shot translation;
plain functions over a model, a tokenizer and arrays, the evaluation stage decides what to measure on which data.
``tok`` is the vocab stage's raw tokenizer; texts are encoded without special tokens, as the shard stage does, so
a document is ``<lang:xx> text-ids <|endoftext|>``. Measures of hidden states (retrieval, the transfer probe) are in
:mod:`.embeddings`, retrieval's lexical baselines in :mod:`.lexical`, scores of texts in :mod:`.scores`."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch.nn.utils.rnn import pad_sequence

from xlmflow.tasks.common.generation import continue_prompts, translate  # noqa: F401  (translate: re-exported)
from xlmflow.tasks.langid import lid
from xlmflow.tasks.langid.quality import KANA


def pad_batch(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, L] ids (pad id 0: causal attention never lets a real position see it) and the mask."""
    ids = pad_sequence([torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in seqs], batch_first=True)
    return ids, torch.arange(ids.shape[1]) < torch.tensor([len(s) for s in seqs])[:, None]


def _windows(ids: np.ndarray, context: int) -> list[tuple[np.ndarray, int]]:
    """Sliding windows of ``context`` tokens with a stride of half of it, each with the index (in the window) of
    its first scored token. The first window scores every token after its first; a later one only the tokens
    after its overlap with the one before, so every token but the document's first is scored exactly once, with
    at least ``context // 2`` tokens (or the whole document before it) as left context. The last window ends
    at the document's end and starts ``context`` before it: its tokens get more context, never less. Twice the
    forward passes of a grid of disjoint windows, which would score a window's first tokens almost blind."""
    n, stride = len(ids), max(1, context // 2)
    out, scored_to, start = [], 1, 0  # scored_to: the first token (of the document) not scored yet
    while True:
        start = min(start, max(n - context, 0))
        stop = min(start + context, n)
        out.append((ids[start:stop], scored_to - start))
        if stop >= n:
            return out
        scored_to, start = stop, start + stride


def doc_texts(tok: Tokenizer, docs: list[np.ndarray]) -> list[str]:
    """The text of tokenised documents (``<lang:xx> ids <|endoftext|>``), decoded by the tokenizer that encoded
    them: the byte-level BPE round trip is exact, so this is the text the shard stage tokenised."""
    return tok.decode_batch([np.asarray(d[1:-1]).tolist() for d in docs], skip_special_tokens=False)


def encode_docs(tok: Tokenizer, texts: list[str], tag_id: int, eos_id: int) -> list[np.ndarray]:
    """Texts tokenised as the shard stage does (special-token strings in a text are plain text), each as
    ``tag ids eos``: how a model with tokenizer ``tok`` saw its training documents."""
    from xlmflow.tasks.common.tokens import encode_ids

    plain = Tokenizer.from_str(tok.to_str())  # a copy: the caller's tokenizer is shared by other measures
    plain.encode_special_tokens = True
    ids, lengths = encode_ids(plain, texts)
    return [np.concatenate([[tag_id], part, [eos_id]]) for part in np.split(ids, np.cumsum(lengths)[:-1])]


def text_units(texts: list[str]) -> tuple[int, int]:
    """(UTF-8 bytes, characters) of documents, the end of each document counted as one of each: every model
    scores the end-of-text token, so the denominator holds it too, whatever the tokenizer."""
    return sum(len(t.encode()) for t in texts) + len(texts), sum(map(len, texts)) + len(texts)


def _per_unit(nll: float, targets: int, texts: list[str]) -> dict:
    n_bytes, n_chars = text_units(texts)
    return dict(
        bits_per_byte=nll / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        bits_per_char=nll / (math.log(2) * n_chars) if n_chars else float("nan"),
        nats_per_token=nll / targets if targets else float("nan"),
        nll_nats=nll,
        targets=targets,
        bytes=n_bytes,
        chars=n_chars,
        docs=len(texts),
    )


@torch.no_grad()
def bits_per_byte(model, docs: list[np.ndarray], texts: list[str], lang_id: int, batch_size: int = 16) -> dict:
    """Bits per UTF-8 byte (and per character) of held-out documents: comparable across tokenizers and
    languages, unlike perplexity, when ``docs`` are ``texts`` tokenised by the model's own tokenizer.

    Targets are every token after the first except tags (inputs only, as in training), in sliding windows
    (:func:`_windows`). The end-of-text token is a target, since the model must learn where a document ends,
    and counts as one byte and one character of the denominator (:func:`text_units`); tags count as neither.
    """
    model.eval()
    rows = model.get_input_embeddings().num_embeddings
    eos = model.config.eos_token_id
    tags = torch.as_tensor(list(model.config.lang_token_ids), dtype=torch.long, device=model.device)
    for d in docs:
        if len(d) < 2 or int(d[-1]) != eos or int(d[0]) not in model.config.lang_token_ids or int(d.max()) >= rows:
            raise ValueError(
                f"a document is not <lang:xx> ids <|endoftext|> in this model's {rows} ids: {np.asarray(d)[:8]}..."
            )
    windows = [w for d in docs for w in _windows(np.asarray(d), model.config.n_positions)]
    windows.sort(key=lambda w: len(w[0]))  # similar lengths share a batch: less padding
    nll, targets = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        ids, mask = (t.to(model.device) for t in pad_batch([w for w, _ in chunk]))
        first = torch.tensor([f for _, f in chunk], device=model.device)
        seen = torch.arange(1, ids.shape[1], device=model.device)[None] < first[:, None]  # scored by the window before
        labels = ids.masked_fill(~mask | torch.isin(ids, tags), -100)[:, 1:].masked_fill(seen, -100)
        out = model(ids, lang_ids=torch.full_like(ids, lang_id), output_hidden_states=True, logits_to_keep=1)
        scored = labels != -100  # the LM head only where a target is: not on overlaps, padding or tags
        logits = model.lm_head(out.hidden_states[-1][:, :-1][scored]).float()
        nll += F.cross_entropy(logits, labels[scored], reduction="sum").item()
        targets += int(scored.sum())
    out = _per_unit(nll, targets, texts)
    out["token_perplexity"] = math.exp(out["nats_per_token"]) if targets else float("nan")
    return out | {"windows": len(windows), "stride": max(1, model.config.n_positions // 2)}


def unigram_baseline(counts: np.ndarray, docs: list[np.ndarray], texts: list[str], tags: list[int]) -> dict:
    """The same measures as :func:`bits_per_byte` for a unigram model: add-one smoothed frequencies of
    ``counts`` (a token's count in the train shards, :func:`unigram_counts`) over every id but the tags, which
    are never targets. Scored on the same targets (``docs``: every token after the first but tags) and
    denominators. A model that does not beat it has learnt no more than token frequencies."""
    support = np.ones(len(counts), dtype=bool)
    support[np.asarray(tags, dtype=np.int64)] = False
    logp = np.log(counts + 1.0) - math.log(counts[support].sum() + support.sum())
    flat = np.concatenate([np.asarray(d[1:], dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    flat = flat[support[flat]]
    return _per_unit(float(-logp[flat].sum()), len(flat), texts)


def unigram_counts(flat_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token counts of a flat id column (a shard batch's ``input_ids`` values), to add up over shards."""
    return np.bincount(np.asarray(flat_ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]


class _Sampler:
    """A logits processor that draws the next token itself, from its own ``torch.Generator``: transformers'
    sampling draws from torch's global generator, which every thread shares, so units on threads would not be
    reproducible. Temperature and top-k, then one draw per row; it returns scores that leave only the drawn token,
    so greedy search (run last, after the model's own processors, which suppress tags) takes it."""

    def __init__(self, generator: torch.Generator, temperature: float = 0.8, top_k: int = 50):
        self.generator, self.temperature, self.top_k = generator, temperature, top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        probs = torch.softmax(logits.masked_fill(logits < kth, -math.inf), dim=-1)
        drawn = torch.multinomial(probs, 1, generator=self.generator)
        return torch.full_like(scores, -math.inf).scatter_(1, drawn, 0.0)


def whole_character_cut(tok: Tokenizer, doc: np.ndarray, k: int) -> int:
    """The longest prompt of at most ``k`` tokens of ``doc`` (tag first) that ends on a character boundary.

    Byte-level BPE tokens can end inside a UTF-8 character (most often in Chinese, Japanese, Arabic): cut there, the
    prompt asks the model to finish a character's bytes, and the continuation decoded alone starts with U+FFFD,
    which the degenerate check reads as no text ("�。"). Prompts a user writes end on whole characters."""
    for j in range(k, 1, -1):
        if not tok.decode(doc[1:j].tolist()).endswith("\ufffd"):
            return j
    return k


def generate(
    model,
    tok: Tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    sample: bool,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Continuations of tagged prompts, greedy or sampled (T=0.8, top-k 50), in batches of prompts of one length.
    Sampling draws from a generator of this call seeded with ``seed`` (not torch's global one), so the same call
    gives the same texts on any thread."""
    from transformers import LogitsProcessorList

    model.eval()
    kwargs: dict = {"do_sample": False}
    if sample:
        generator = torch.Generator(device=model.device).manual_seed(seed)
        kwargs["logits_processor"] = LogitsProcessorList([_Sampler(generator)])
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for rows in by_length.values():  # in order of first appearance: the draws do not depend on dict order
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for i, text in zip(
                batch, continue_prompts(model, tok, [list(prompts[i]) for i in batch], max_new_tokens, **kwargs)
            ):
                out[i] = text
    return out


def language_hits(lid_model, texts: list[str], lang: str) -> np.ndarray:
    """One bool per text: fastText labels it ``lang`` and it is a real text. Does the model write the language its
    tag asks for?

    Texts with fewer than 3 letters say nothing about a language, and degenerate ones (empty, or looping:
    :func:`.scores.degenerate`) are not writing; both are misses, whatever LID calls them (it calls "ًًًً" Arabic
    and "the the the" English). As in the langid stage, a ``ja`` label without kana means ``zh``.
    """
    from xlmflow.tasks.evaluate import scores

    if not texts:
        return np.zeros(0, dtype=bool)
    series = pl.Series(texts, dtype=pl.String)
    top = pl.from_arrow(lid.predict(lid_model, series, 1, 4096)[0]).list.first()
    ja_as_zh = (top == "ja") & ~series.str.contains(KANA)  # as the langid stage decides
    label = top.zip_with(~ja_as_zh, pl.Series(["zh"] * len(top)))
    hit = (label == lang).fill_null(False) & (series.str.count_matches(r"\p{L}") >= 3)
    return hit.to_numpy() & ~scores.degenerate(texts)


def language_rate(lid_model, texts: list[str], lang: str) -> float:
    """Share of :func:`language_hits`; 0.0 for no texts."""
    hits = language_hits(lid_model, texts, lang)
    return float(hits.mean()) if len(hits) else 0.0


def chrf_bleu(hyps: list[str], refs: list[str], tgt: str) -> dict:
    """Corpus chrF++ and BLEU (sacrebleu, configured by :func:`.scores.sacre_metrics`) and their signatures; the
    evaluation's full set of translation scores (intervals, ROUGE, the copy baseline) is
    :func:`.scores.translation_scores`."""
    from xlmflow.tasks.evaluate import scores

    chrf, bleu = scores.sacre_metrics(tgt)
    c, b = chrf.corpus_score(hyps, [refs]), bleu.corpus_score(hyps, [refs])
    signature = {"chrf": chrf.get_signature().format(), "bleu": bleu.get_signature().format()}
    return {"chrf": float(c.score), "bleu": float(b.score), "segments": len(hyps), "signature": signature}
