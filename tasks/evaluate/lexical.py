"""The lexical baselines of translation retrieval: a bag of token ids and character 3-gram TF-IDF, retrieved by
cosine nearest neighbour over sparse rows. Shared surface form (names, numbers, cognates) retrieves translations
too: a model's retrieval shows cross-lingual representations only where it beats these. No torch."""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view
from tokenizers import Tokenizer


def token_counts(tok: Tokenizer, texts: list[str]):
    """Segment x token-id count matrix (scipy CSR) of texts encoded without special tokens: the bag of tokens."""
    import scipy.sparse as sp

    from xlmflow.tasks.common.tokens import encode_ids

    ids, lengths = encode_ids(tok, texts)
    rows = np.repeat(np.arange(len(texts)), lengths)
    m = sp.csr_matrix((np.ones(len(ids)), (rows, ids)), shape=(len(texts), tok.get_vocab_size()))
    m.sum_duplicates()
    return m


def char_ngram_tfidf(a: list[str], b: list[str], n: int = 3):
    """TF-IDF vectors of character n-grams of two lists of texts (scipy CSR each), fitted on both together.

    As scikit-learn's ``TfidfVectorizer(analyzer="char", ngram_range=(n, n))``: lowercased, runs of whitespace
    as one space, raw counts times a smoothed idf ``ln((1 + N) / (1 + df)) + 1``, rows L2-normalised. No
    tokenizer, so it is the same yardstick for every model. Fitted on the texts compared (no labels are used)."""
    import scipy.sparse as sp

    texts = pl.Series([*a, *b], dtype=pl.String).fill_null("").str.to_lowercase().str.replace_all(r"\s\s+", " ")
    lengths = texts.str.len_chars().to_numpy().astype(np.int64)
    chars = np.frombuffer("".join(texts.to_list()).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    doc = np.repeat(np.arange(len(texts)), lengths)
    if len(chars) >= n:
        windows = sliding_window_view(chars, n)
        codes = np.zeros(len(windows), np.uint64)
        for j in range(n):  # code points are below 2^21: n <= 3 of them fit in 64 bits exactly
            codes = (codes << np.uint64(21)) | windows[:, j]
        inside = doc[: len(windows)] == doc[n - 1 :]  # no n-gram across two texts
        codes, rows = codes[inside], doc[: len(windows)][inside]
    else:
        codes, rows = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    vocab, cols = np.unique(codes, return_inverse=True)
    counts = sp.csr_matrix((np.ones(len(cols)), (rows, cols.ravel())), shape=(len(texts), len(vocab)))
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=len(vocab))
    idf = np.log((1 + len(texts)) / (1 + df)) + 1
    x = _unit_rows(counts.multiply(idf[None, :]))
    return x[: len(a)], x[len(a) :]


def _unit_rows(m):
    """Rows of a sparse matrix scaled to unit L2 norm (an all-zero row stays zero), as CSR."""
    import scipy.sparse as sp

    m = sp.csr_matrix(m)
    norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
    return sp.csr_matrix(sp.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)) @ m)


def sparse_retrieval_accuracy(a, b) -> np.ndarray:
    """Accuracy@1 of cosine nearest-neighbour retrieval between aligned rows of two sparse matrices, [2] for a->b
    and b->a (rows with nothing in common score 0 with everything; argmax breaks ties by the lowest index, as
    :func:`.embeddings.retrieval_accuracy` does)."""
    sims = (_unit_rows(a) @ _unit_rows(b).T).toarray()
    gold = np.arange(sims.shape[0])
    return np.array([(sims.argmax(axis=1) == gold).mean(), (sims.argmax(axis=0) == gold).mean()])
