"""What the langid stage computes on one batch, in memory: LID scores (:mod:`.lid`), quality signals
(:mod:`.quality`), and the whole decision on plain texts (:func:`label_texts`)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from xlmflow.tasks.common.ngrams import NgramIndex
from xlmflow.tasks.langid import overlap, quality
from xlmflow.tasks.langid.decide import decide
from xlmflow.tasks.langid.lid import load_model, model_file, predict
from xlmflow.tasks.langid.params import LangidParams
from xlmflow.tasks.langid.schemas import SCORES_SCHEMA, SIGNAL_FIELDS, SIGNALS_SCHEMA


def score_batch(model, doc_id: pa.Array, text: pl.Series, params: LangidParams) -> pa.RecordBatch:
    """LID scores of one batch: doc_id, top-k labels, top-k probabilities."""
    model = load_model(model_file(params.model_path)) if model is None else model
    labels, probs = predict(model, text, params.top_k, params.lid_max_chars)
    return pa.RecordBatch.from_arrays([pa.array(doc_id, pa.string()), labels, probs], schema=SCORES_SCHEMA)


def signals_batch(doc_id: pa.Array, text: pl.Series, held: NgramIndex | None = None) -> pa.RecordBatch:
    """Quality signals of one batch (vectorised polars expressions), and its n-grams shared with ``held``, the
    eval segments' index (:func:`.overlap.eval_index`)."""
    signals = quality.signals(text).with_columns(overlap.eval_ngrams(held, text))
    cols = [pa.array(doc_id, pa.string())] + [signals[name].to_arrow().cast(t) for name, t in SIGNAL_FIELDS]
    return pa.RecordBatch.from_arrays(cols, schema=SIGNALS_SCHEMA)


def label_texts(
    texts: list[str] | pl.Series, params: LangidParams | None = None, claimed: list[str | None] | None = None
) -> pl.DataFrame:
    """The stage's LID and filtering on plain texts, in memory: lang, lid_prob, reason (null = kept)."""
    params = params or LangidParams()
    text = pl.Series("text", texts, dtype=pl.String)
    ids = pa.array([str(i) for i in range(len(text))], pa.string())
    scores = pl.from_arrow(pa.Table.from_batches([score_batch(None, ids, text, params)]))
    signals = pl.from_arrow(pa.Table.from_batches([signals_batch(ids, text)])).drop("doc_id")
    scores = scores.hstack(signals).with_columns(
        pl.Series("claimed_lang", claimed if claimed is not None else [None] * len(text), dtype=pl.String)
    )
    return decide(scores, params).select("lang", "lid_prob", "reason", "mismatched")
