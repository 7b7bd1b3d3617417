"""Language ID and filtering: ingested documents -> a clean corpus partitioned by language.

Scores are stored apart from decisions (as dolma stores tagger attributes), so a new
threshold or set of kept languages re-runs only the cheap steps, never the model:

* ``scores/<part>/``   one unit per ingest unit: doc_id and fastText top-k labels and
  probabilities. Depends on the model's bytes, ``top_k``, ``lid_max_chars`` and the
  ingested part only: the only unit that runs the model.
* ``signals/<part>/``  one unit per ingest unit: doc_id and the quality signals of
  :mod:`.quality` (numbers, no decisions), and the n-grams each document shares with
  the held-out eval segments (:mod:`.overlap`). Separate from the scores so the two run
  side by side and neither waits for the other.
* ``filter/<part>/``   one unit per ingest unit: applies thresholds (a global one and
  per-language overrides, as FineWeb-2), the zh-labelled-ja fix (short Simplified
  Chinese is often labelled ``ja``; no kana means zh), ``keep_langs``, the claimed vs
  detected handling (relabel, or drop) and the quality rules. Kept documents go to
  ``lang=<xx>/part-NNNNN.parquet``, the others to ``rejected/`` with their reason.
* ``dedup/lang=<xx>/inc=NNNN/`` one unit per detected language and increment (:mod:`.increments`: a run
  without ``incremental`` makes one increment of everything): exact and MinHash near-dedup
  (:mod:`.dedup`) and the ``min_lang_docs`` rule, in an incremental run also against the
  ``index.parquet`` of the earlier increments (kept documents stay kept); ``rejected.parquet`` holds the
  dropped documents with reason and ``dup_of``. Per language is exact: the label is a
  function of the text alone (relabel keeps the detected label; drop keeps only
  documents whose claim agrees), so identical texts share a language. Texts equal only
  after normalisation (case, punctuation) could in rare cases get different labels
  and then both survive.
* ``clean/lang=<xx>/inc=NNNN/part-NNNNN.parquet`` the contract for later stages.
* ``stats.json`` counts per language and reason, and per (claimed, detected) pair; ``increments.json`` the
  ledger: each increment's number, date, inputs and dedup units.

This module is the stage: its planning, unit bodies and commit. The parts live apart:
its parameters in :mod:`.params`, output schemas in :mod:`.schemas`, one batch's scores and
signals in :mod:`.score`, the model in :mod:`.lid`, the rules in :mod:`.decide`, the quality
signals in :mod:`.quality`, dedup in :mod:`.dedup`, the counts in :mod:`.stats`, the UI report
in :mod:`.ui`.
"""

from __future__ import annotations

from typing import Any, Iterator

import orjson
import polars as pl
import pyarrow as pa

from xlmflow.storage import (
    Aside,
    FileWriter,
    Location,
    PartWriter,
    RunDir,
    code_version,
    file_sha256,
    load_output,
    partition,
    partition_value,
    read_batches,
    split_path,
)
from xlmflow.storage.increments import LEDGER, increment_part, ledger_bytes, read_ledger
from xlmflow.tasks.common.parallel_sets import parallel_files
from xlmflow.tasks.common.runtime import (
    Input,
    Ref,
    Unit,
    commit_stage,
    ensure,
    logger,
    plain_step,
    stage_unit,
    step,
    sum_stats,
    unit_manifest,
)
from xlmflow.tasks.langid import increments, overlap
from xlmflow.tasks.langid import stats as langid_stats
from xlmflow.tasks.langid.decide import decide, holdout_segments
from xlmflow.tasks.langid.dedup_units import INDEX, clean_unit, dedup_unit
from xlmflow.tasks.langid.lid import load_model, model_file, model_fingerprint
from xlmflow.tasks.langid.params import LangidParams
from xlmflow.tasks.langid.schemas import KEPT_SCHEMA, REJECTED, REJECTED_SCHEMA, SCORES_SCHEMA, SIGNALS_SCHEMA
from xlmflow.tasks.langid.score import label_texts as label_texts  # the stage on texts in memory
from xlmflow.tasks.langid.score import score_batch, signals_batch

STAGE = "langid"
INGEST = "ingest"
READS = (INGEST,)  # the stages whose committed output it reads


# ---------------------------------------------------------------- planning
def plan(run: RunDir, params: LangidParams) -> tuple[list[Unit], list[Unit], list[Unit]]:
    """(scores units, signals units, filter units): one each per ingest unit, fingerprinted by content."""
    ingest_loc = run.stage(INGEST)
    ingest = load_output(ingest_loc, INGEST)
    parts: dict[str, dict[str, Input]] = {}
    for f in ingest.files:
        group, unit, name = split_path(f.path, 2)
        if group == "parts" and name.startswith("part-") and name.endswith(".parquet"):
            parts.setdefault(unit, {})[name] = Input(ingest_loc.child(f.path).uri, f.sha256)
    if not parts:
        raise FileNotFoundError(f"{ingest_loc}: the ingest stage holds no documents; ingest a source first")
    path = model_file(params.model_path)
    model = {"model": {Location(path).name: Input(path, model_fingerprint(path))}}
    code = code_version(__name__)
    score_params = {"top_k": params.top_k, "lid_max_chars": params.lid_max_chars}
    filter_params = params.model_dump(
        include={"threshold", "thresholds", "keep_langs", "mismatch", "fix_zh_ja", "quality"}
    )
    held = {
        loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])
        for _, loc in parallel_files(params.holdout, ("eval",))
    }
    scores, signals, filters = [], [], []
    for unit, docs in sorted(parts.items()):
        s = Unit(
            stage=STAGE,
            name=unit,
            out=run.unit(STAGE, unit, group="scores").uri,
            code_version=code,
            params=score_params,
            inputs={"docs": docs, **model},
        )
        q = Unit(
            stage=STAGE,
            name=unit,
            out=run.unit(STAGE, unit, group="signals").uri,
            code_version=code,
            params={"holdout_ngram": params.holdout_ngram} if held else {},  # n matters only with held-out sets
            inputs={"docs": docs, "holdout": held},
        )
        scores.append(s)
        signals.append(q)
        filters.append(
            Unit(
                stage=STAGE,
                name=unit,
                out=run.unit(STAGE, unit, group="filter").uri,
                code_version=code,
                params=filter_params,
                inputs={
                    "docs": docs,
                    "holdout": held,
                    "scores": {unit: Input(s.out, s.fingerprint)},
                    "signals": {unit: Input(q.out, q.fingerprint)},
                },
            )
        )
    return scores, signals, filters


def plan_dedup(
    run: RunDir, params: LangidParams, filter_units: list[Unit], filter_refs: list[Ref], incremental: bool = False
) -> tuple[list[Unit], list[Unit], dict]:
    """(the earlier increments' dedup units, the new increment's, the ledger to commit).

    The new increment's units: one per language its filter units kept, depending on the content of those files
    and, in an incremental run, on the index of every earlier increment of that language (:mod:`.increments`)."""
    stage = run.stage(STAGE)
    inc = increments.split(stage, params.dedup.model_dump(), filter_units, incremental)
    earlier = increments.earlier_units(inc, run.root)
    index: dict[str, dict[str, Input]] = {}
    for u in earlier:
        index.setdefault(u.params["lang"], {})[u.name] = Input(Location(u.out).child(INDEX).uri, u.fingerprint)
    by_lang: dict[str, dict[str, Input]] = {}
    rows: dict[str, int] = {}
    new_refs = [r for u, r in zip(filter_units, filter_refs) if u.name in inc.new]
    for ref in sorted(new_refs, key=lambda r: r.uri):
        m = unit_manifest(ref)
        for f in m.files:
            lang = partition_value(f.path, "lang")
            if lang is not None:
                by_lang.setdefault(lang, {})[f"{m.unit}/{f.path}"] = Input(
                    Location(ref.uri).child(f.path).uri, f.sha256
                )
                rows[lang] = rows.get(lang, 0) + (f.rows or 0)
    code = code_version(__name__)
    unit_params = {"dedup": params.dedup.model_dump(), "min_lang_docs": params.min_lang_docs}
    new = []
    for lang, files in sorted(by_lang.items()):
        name = partition("lang", lang, increment_part(inc.number))
        new.append(
            Unit(
                stage=STAGE,
                name=name,
                out=run.unit(STAGE, name, group="dedup").uri,
                code_version=code,
                params={**unit_params, "lang": lang, "increment": inc.number},
                inputs={"kept": files, "index": index.get(lang, {})},
                options={"expected_docs": rows[lang]},  # sizes the hash buckets; not in the key
            )
        )
    if inc.new and not incremental:
        logger().info("langid: one increment of %d inputs (not an incremental run)", len(inc.new))
    elif inc.new:
        logger().info(
            "langid: increment %d: %d new or changed inputs, deduplicated against %d earlier increments (%s)",
            inc.number,
            len(inc.new),
            len(inc.earlier),
            inc.full_reason or "appended",
        )
    else:
        logger().info("langid: no new inputs; %d increments as committed", len(inc.earlier))
    return earlier, new, increments.ledger(inc, new, run.root, read_ledger(stage))


def plan_clean(run: RunDir, dedup_units: list[Unit], dedup_refs: list[Ref]) -> list[Unit]:
    """One clean unit per language with documents left after dedup."""
    units = []
    for u, ref in zip(dedup_units, dedup_refs):
        lang = u.params["lang"]
        if unit_manifest(ref).stats.get("dedup_kept", {}).get(lang, 0) > 0:
            units.append(
                Unit(
                    stage=STAGE,
                    name=u.name,
                    out=run.unit(STAGE, u.name, group="clean").uri,
                    code_version=u.code_version,
                    params={"lang": lang, "increment": u.params["increment"]},
                    inputs={"kept": u.inputs["kept"], "dedup": {u.name: Input(ref.uri, ref.fingerprint)}},
                )
            )
    return units


# ---------------------------------------------------------------- units
def score_unit(unit: Unit) -> Ref:
    """Run LID on one ingest unit: a scores ``part-NNNNN.parquet`` per docs part, rows in the same order."""
    model_input = unit.input("model")
    params = LangidParams(
        top_k=unit.params["top_k"], lid_max_chars=unit.params["lid_max_chars"], model_path=model_input.uri
    )
    model = load_model(model_input.uri)

    def build(aside: Aside) -> dict:
        n = _per_batch(
            unit, aside, SCORES_SCHEMA, lambda b: score_batch(model, b.column(0), pl.from_arrow(b.column(1)), params)
        )
        logger().info(
            "langid/scores/%s: ran LID on %d documents (model %s)", unit.name, n, model_input.fingerprint[:12]
        )
        return {"scored": n}

    return ensure(unit, build)


def signals_unit(unit: Unit) -> Ref:
    """Quality signals of one ingest unit: a signals ``part-NNNNN.parquet`` per docs part, rows in the same order."""
    files = tuple((i.uri, i.fingerprint) for _, i in unit.each("holdout"))
    held = overlap.eval_index(files, unit.params.get("holdout_ngram", 0))

    def build(aside: Aside) -> dict:
        return {
            "signalled": _per_batch(
                unit, aside, SIGNALS_SCHEMA, lambda b: signals_batch(b.column(0), pl.from_arrow(b.column(1)), held)
            )
        }

    return ensure(unit, build)


def _per_batch(unit: Unit, aside: Aside, schema: pa.Schema, fn) -> int:
    """Apply ``fn`` to every (doc_id, text) batch of the unit's docs parts, one output file per part."""
    n = 0
    for name, docs in unit.each("docs"):
        writer = FileWriter(aside.path(name), schema)
        for batch in read_batches(Location(docs.uri), ["doc_id", "text"]):
            writer.write(fn(batch))
            n += batch.num_rows
        writer.close()
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
    scores_loc, signals_loc = Location(unit.input("scores").uri), Location(unit.input("signals").uri)
    holdout = holdout_segments([Location(i.uri) for _, i in unit.each("holdout")])

    def build(aside: Aside) -> dict:
        kept: dict[str, PartWriter] = {}
        rejected = PartWriter(lambda n: aside.path(f"{REJECTED}/{n}"), REJECTED_SCHEMA)
        stats: dict[str, Any] = {"filter_kept": {}, "rejected": {}, "mismatch": {}}
        for name, docs_input in unit.each("docs"):
            uri = docs_input.uri
            docs = read_batches(Location(uri), ["doc_id", "text", "claimed_lang", "source"])
            for d, s, q in _aligned(docs, read_batches(scores_loc.child(name)), read_batches(signals_loc.child(name))):
                for loc, t in ((scores_loc, s), (signals_loc, q)):
                    if not d["doc_id"].equals(t["doc_id"]):
                        raise RuntimeError(
                            f"{loc.child(name)}: rows are not in the order of {uri}; delete {loc} to rebuild it"
                        )
                df = decide(
                    pl.from_arrow(s).hstack(pl.from_arrow(q).drop("doc_id")).hstack(pl.from_arrow(d).drop("doc_id")),
                    params,
                    holdout,
                )
                langid_stats.count(stats, df)
                ok = df.filter(pl.col("reason").is_null())
                for (lang,), part in ok.partition_by("lang", as_dict=True, maintain_order=True).items():
                    if lang not in kept:
                        kept[lang] = PartWriter(
                            lambda n, lang=lang: aside.path(partition("lang", lang, n)), KEPT_SCHEMA
                        )
                    kept[lang].write(part.select(KEPT_SCHEMA.names).to_arrow())
                bad = df.filter(pl.col("reason").is_not_null()).with_columns(pl.lit(None, pl.String).alias("dup_of"))
                rejected.write(bad.select(REJECTED_SCHEMA.names).to_arrow())
        for w in kept.values():
            w.close()
        rejected.close()
        return stats

    return ensure(unit, build)


# ---------------------------------------------------------------- the stage
def stage_for(run: RunDir, params: LangidParams, refs: list[Ref]) -> Unit:
    ingest = load_output(run.stage(INGEST), INGEST)
    return stage_unit(
        run.stage(STAGE).uri,
        STAGE,
        refs,
        code_version(__name__),
        params.model_dump(exclude={"model_path", "holdout"})
        | {"model": model_fingerprint(model_file(params.model_path))},
        inputs={"ingest": {"stage": Input(run.stage(INGEST).uri, ingest.fingerprint)}},
    )


def commit_langid(unit: Unit, refs: list[Ref], ledger: dict | None = None) -> Ref:
    """Commit the stage with stats.json (counts per language and reason, per claimed/detected pair) and the
    ledger of its increments (:data:`LEDGER`), each with the clean documents it added per language."""

    def build(aside: Aside) -> dict:
        manifests = [unit_manifest(r) for r in refs]
        summary = langid_stats.summarise(sum_stats([m.stats for m in manifests]))
        with aside.path("stats.json").open("wb") as f:
            f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        if ledger is not None:
            for entry in ledger["increments"]:
                entry["documents"] = sum_stats(
                    [m.stats.get("clean", {}) for m in manifests if m.params.get("increment") == entry["number"]]
                )
            with aside.path(LEDGER).open("wb") as f:
                f.write(ledger_bytes(ledger))
        return {
            "languages": summary["languages"],
            "documents": summary["documents"]["clean"],
            "increments": len(ledger["increments"]) if ledger else 1,
        }

    return commit_stage(unit, refs, build=build)


# ---------------------------------------------------------------- Prefect tasks
plan_task = plain_step("langid-plan")(plan)
plan_dedup_task = plain_step("langid-plan-dedup")(plan_dedup)
plan_clean_task = plain_step("langid-plan-clean")(plan_clean)
score_part = step(name="langid-score")(score_unit)
signals_part = step(name="langid-signals")(signals_unit)
filter_part = step(name="langid-filter")(filter_unit)
dedup_lang = step(name="langid-dedup")(dedup_unit)
clean_lang = step(name="langid-clean")(clean_unit)
commit_task = step(name="langid-commit")(commit_langid)
