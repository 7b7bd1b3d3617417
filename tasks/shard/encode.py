"""Token ids as the shard stage writes them: the vocabulary's tokenizer (loaded once per process and file), a batch
of texts encoded as ``<lang:xx>`` + tokens + ``<|endoftext|>`` with numpy offsets, the id type that fits."""

from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from xlmflow.storage import Location
from xlmflow.tasks.common.specials import TOKENIZER_FILE

UINT16_VOCAB = 1 << 16


def shard_schema(ids_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [("input_ids", pa.list_(ids_type)), ("n_tokens", pa.int32()), ("lang", pa.string()), ("doc_id", pa.string())]
    )


def token_type(vocab_size: int) -> pa.DataType:
    """uint16 while every id fits (vocab_size <= 65536), else uint32."""
    return pa.uint16() if vocab_size <= UINT16_VOCAB else pa.uint32()


def load_tokenizer(vocab_loc: Location, sha256: str | None = None) -> Tokenizer:
    """The vocabulary's tokenizer, with special-token strings inside texts encoded as plain text.

    With ``sha256`` (the file's, from the vocab manifest) the parsed tokenizer is shared
    by every shard of the process: parsing a large tokenizer.json costs more than a
    small shard's tokenisation. A file that no longer matches is an error.
    """
    if sha256 is not None:
        return _shared_tokenizer(vocab_loc.uri, sha256)
    with vocab_loc.child(TOKENIZER_FILE).open("rb") as f:
        tok = Tokenizer.from_str(f.read().decode("utf-8"))
    tok.encode_special_tokens = True  # a document quoting "<|endoftext|>" must not end there
    return tok


@lru_cache(maxsize=4)
def _shared_tokenizer(vocab_uri: str, sha256: str) -> Tokenizer:
    loc = Location(vocab_uri).child(TOKENIZER_FILE)
    with loc.open("rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{loc}: does not match the vocab manifest it was planned with; rerun the shard stage")
    tok = Tokenizer.from_str(data.decode("utf-8"))
    tok.encode_special_tokens = True
    return tok


def tokenize(
    tok: Tokenizer, texts: pa.Array | pa.ChunkedArray, tag_id: int, eos_id: int, ids_type: pa.DataType
) -> tuple[pa.ListArray, np.ndarray]:
    """(``input_ids`` list array, token counts) for a batch of texts: tag + tokens + end-of-text.

    Empty texts give 2 tokens (tag, end-of-text); the caller drops them.
    """
    encodings = tok.encode_batch_fast(pc.fill_null(texts, "").to_pylist(), add_special_tokens=False)
    lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
    dtype = ids_type.to_pandas_dtype()
    content = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype, int(lengths.sum()))
    n_tokens = lengths + 2
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(n_tokens, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype)
    is_content = np.ones(len(flat), bool)
    flat[offsets[:-1]] = tag_id
    flat[offsets[1:] - 1] = eos_id
    is_content[offsets[:-1]] = False
    is_content[offsets[1:] - 1] = False
    flat[is_content] = content
    if offsets[-1] >= 1 << 31:
        raise ValueError("a tokenised batch holds over 2**31 tokens; lower batch_docs")
    ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, ids_type))
    return ids, n_tokens.astype(np.int32)
