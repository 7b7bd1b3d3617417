"""The Parquet schemas of the langid stage's outputs: LID scores, quality signals, kept and rejected documents."""

from __future__ import annotations

import pyarrow as pa

SIGNAL_FIELDS = [
    ("n_chars", pa.int64()),
    ("n_words", pa.int64()),
    ("unspaced", pa.bool_()),
    ("mean_word_len", pa.float32()),
    ("symbol_ratio", pa.float32()),
    ("digit_ratio", pa.float32()),
    ("alpha_ratio", pa.float32()),
    ("dup_line_frac", pa.float32()),
    ("has_kana", pa.bool_()),
    ("rep_ngram_frac", pa.float32()),
    ("eval_ngrams", pa.int32()),  # n-grams shared with held-out eval segments (:mod:`.overlap`)
]
SCORES_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("lid_labels", pa.list_(pa.string())), ("lid_probs", pa.list_(pa.float32()))]
)
SIGNALS_SCHEMA = pa.schema([("doc_id", pa.string()), *SIGNAL_FIELDS])
KEPT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.large_string()),
        ("lang", pa.string()),
        ("lid_prob", pa.float32()),
        ("claimed_lang", pa.string()),
        ("source", pa.string()),
    ]
)
REJECTED_SCHEMA = pa.schema([*KEPT_SCHEMA, ("reason", pa.string()), ("dup_of", pa.string())])
REJECTED = "rejected"  # the filter's rejected documents: filter/<part>/rejected/part-NNNNN.parquet
