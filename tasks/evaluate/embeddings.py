"""Measures of a model's hidden states: mean-pooled vectors of every layer, translation retrieval between two
languages' vectors, per-language centring, and the zero-shot transfer probe. Plain functions over a model, a
tokenizer and arrays; :mod:`.retrieval` decides which layer a parallel set's figure comes from."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from xlmflow.tasks.evaluate.measures import pad_batch

_PROBE_L2 = 1e-3  # weight decay of the transfer probe (per-sample mean loss + L2 * |W|^2)


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
    order = np.argsort([len(s) for s in seqs], kind="stable")  # batches of similar lengths: little padding
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in rows])
        mask[:, 0] = False  # the tag
        ids = ids.to(model.device)
        # logits of one position only: the LM head over the whole vocabulary would cost more than the layers
        outputs = model(
            ids, lang_ids=torch.full_like(ids, lang_id), output_hidden_states=True, use_cache=False, logits_to_keep=1
        )
        hidden = torch.stack(outputs.hidden_states)  # [n_layer + 1, B, L, H]
        weights = mask.to(hidden.device, hidden.dtype)[None, :, :, None]
        pooled = (hidden * weights).sum(2) / weights.sum(2).clamp(min=1)
        out[:, rows] = F.normalize(pooled.float(), dim=-1).cpu().numpy()  # zero stays zero
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


def language_mean(vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean vector of one language per layer, [layers, H], over ``rows`` (default: every non-zero row; an empty
    text embeds as zero and says nothing about the language). Zero where no row is left: centring is then a no-op.
    """
    if rows is None:
        rows = np.abs(vectors).sum(axis=(0, 2)) > 0
    return vectors[:, rows].mean(axis=1) if rows.any() else np.zeros((vectors.shape[0], vectors.shape[2]), np.float32)


def centre(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Vectors minus their language's mean, L2-normalised again, [layers, N, H] (Libovický et al. 2020: the
    language-specific part of a multilingual representation is largely a constant offset per language, so removing
    it leaves what is shared). Zero rows (empty texts) stay zero."""
    out = vectors - mean[:, None, :]
    norm = np.linalg.norm(out, axis=2, keepdims=True)
    out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)
    return np.where(np.abs(vectors).sum(axis=2, keepdims=True) > 0, out, 0).astype(np.float32)


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
