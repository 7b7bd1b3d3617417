"""Token-level helpers shared by the vocabulary's alignment and fairness measures.

What an id means as text (:func:`surfaces`), a batch encoded to flat ids
(:func:`encode_ids`), which ids occur in each text (:func:`presence`).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import scipy.sparse as sp
from tokenizers import Tokenizer

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_cjk(text: str) -> bool:
    return bool(CJK.search(text))


def encode_ids(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All ids of a batch, concatenated, and the number of ids per text."""
    encs = (
        tok.encode_batch_fast(texts, add_special_tokens=False)
        if hasattr(tok, "encode_batch_fast")
        else tok.encode_batch(texts, add_special_tokens=False)
    )
    lengths = np.fromiter(map(len, encs), dtype=np.int64, count=len(encs))
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int64, count=int(lengths.sum()))
    return ids, lengths


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def surfaces(tok: Tokenizer) -> tuple[list[str | None], np.ndarray]:
    """Each id's text (None for specials and partial UTF-8 sequences) and whether it starts a word (leading space)."""
    table = _byte_decoder()
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    out: list[str | None] = [None] * tok.get_vocab_size()
    for token, i in tok.get_vocab().items():
        if token in special:
            continue
        try:
            out[i] = bytes(table[ch] for ch in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            out[i] = None
    initial = np.array([s is not None and s.startswith(" ") for s in out])
    return out, initial


def presence(tok: Tokenizer, texts: list[str], keep: np.ndarray | None = None) -> sp.csr_matrix:
    """Binary segment x token matrix (which ids occur in each text), restricted to ``keep`` ids."""
    ids, lengths = encode_ids(tok, texts)
    rows = np.repeat(np.arange(len(texts)), lengths)
    if keep is not None:
        mask = keep[ids]
        rows, ids = rows[mask], ids[mask]
    m = sp.csr_matrix((np.ones(len(ids), np.float64), (rows, ids)), shape=(len(texts), tok.get_vocab_size()))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m
