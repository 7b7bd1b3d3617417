"""Shards: clean documents -> tokenised train/valid Parquet shards that training streams; and the train parts of
the run's parallel sets, tokenised, for the training loader's translation-pair blocks (:mod:`.pairs`).

Each document becomes ``<lang:xx>`` + its tokens + ``<|endoftext|>`` in an ``input_ids``
column (uint16 while the vocabulary fits, else uint32) next to ``n_tokens``, ``lang`` and
``doc_id``. Files are plain Parquet (zstd, row groups of ~``row_group_tokens`` tokens so a
streaming reader holds a few MB per open shard), read as they are by pyarrow, polars and
``datasets.load_dataset("parquet", ...)``.

Planning reads only the langid manifest and the ``doc_id`` column. A document is in the
validation split when a seeded 63-bit hash of its id falls below a per-language
threshold: ``valid_fraction`` of the hash range, raised when needed so every language has
at least ``min_valid_docs`` (capped at half its documents). A document's split therefore
depends only on its id, the seed and the size of its language, never on file order.
Shards are contiguous runs of each language's documents in manifest order, holding
``shard_docs`` documents of their split; every shard is one unit whose fingerprint covers
the sha256 of the input files it reads, the tokenizer file's sha256, its row ranges and
threshold, and the code - so same input, vocabulary and seed give the same bytes, and a
changed input file rebuilds only the shards that read it. Order inside a shard is input
order; shuffling is the loader's job (shard order per epoch, a shuffle buffer).

Languages are planned per increment (the langid stage's ``clean/lang=xx/inc=NNNN/``, :mod:`xlmflow.storage.increments`):
a later increment of a language is split by the threshold its first increment set and its shards are numbered
after the earlier ones, so an incremental run appends shard files and every earlier shard stays the same unit,
with the same bytes. ``shards.json`` gives each shard its increment, lists the increments (number, date, inputs,
tokens) and counts the documents of languages the tokenizer has no tag for (``untagged``: left out). With
``drop_removed``, the documents of input files gone from the sources are left out too (:mod:`.dropped`).

Tokenisation runs ``Tokenizer.encode_batch_fast`` (Rust, multi-threaded, no offsets) on
batches of texts; tags and end-of-text are added with numpy offsets, not per document.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
from tokenizers import Tokenizer

from xlmflow.storage import (
    Aside,
    FileWriter,
    Location,
    RunDir,
    code_version,
    load_output,
    partitions,
    read_batches,
    read_manifest,
    relative,
    stable_hashes,
)
from xlmflow.storage.increments import increment_of, read_ledger
from xlmflow.storage.shards import INDEX, PAIRS, SPLITS, STAGE, shard_file, shard_name
from xlmflow.tasks.common.inputs import from_inputs
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
    unit_manifest,
)
from xlmflow.tasks.common.specials import EOS, TOKENIZER_FILE, lang_tag, untagged
from xlmflow.tasks.shard import dropped, pairs
from xlmflow.tasks.shard.encode import load_tokenizer, shard_schema, token_type, tokenize
from xlmflow.tasks.shard.params import ShardParams
from xlmflow.tasks.shard.split import (
    check_ids,
    file_ranges,
    positions_below,
    split_language,
    train_cuts,
    valid_cuts,
)

LANGID, VOCAB = "langid", "vocab"
READS = (LANGID, VOCAB)  # the stages whose committed output it reads


# ---------------------------------------------------------------- planning: langid manifest -> one unit per shard
def plan(run: RunDir, params: ShardParams) -> list[Unit]:
    """Split every language by doc-id hash and cut each split into shards of ``shard_docs`` documents."""
    code = code_version(__name__)
    langid_loc = run.stage(LANGID)
    langid = load_output(langid_loc, LANGID)
    tok_sha, tok = _tokenizer_of(run)
    ids_type = str(token_type(tok.get_vocab_size(with_added_tokens=True)))
    units: list[Unit] = []
    removed = dropped.removed_by_increment(langid_loc, params.drop_removed)
    for lang, files in partitions(langid, "clean").items():
        files = [f for f in files if f.path.endswith(".parquet")]
        if tok.token_to_id(lang_tag(lang)) is None:
            logger().warning(
                "shards: language %r has clean documents but the vocabulary has no %s token; "
                "skipping it (the vocab stage did not keep it)",
                lang,
                lang_tag(lang),
            )
            continue
        by_increment: dict[int, list] = {}
        for f in files:
            by_increment.setdefault(increment_of(f.path) or 1, []).append(f)
        threshold, numbers = None, {"train": 0, "valid": 0}
        for increment, inc_files in sorted(by_increment.items()):
            sizes = [f.rows or 0 for f in inc_files]
            paths = [f.path for f in inc_files]
            if threshold is None:  # the language's first increment sets its threshold; later ones keep it
                threshold, valid_pos = split_language(langid_loc, paths, sum(sizes), params)
            else:
                valid_pos = positions_below(langid_loc, paths, threshold, params.seed)
            found = dropped.positions(langid_loc, paths, removed[increment]) if increment in removed else {}
            starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            for split, cuts in (
                ("train", train_cuts(valid_pos, int(starts[-1]), params.shard_docs)),
                ("valid", valid_cuts(valid_pos, params.shard_docs)),
            ):
                for number, (lo, hi, docs) in enumerate(cuts, start=numbers[split]):
                    ranges = file_ranges(inc_files, starts, lo, hi)
                    name = shard_name(lang, number)
                    unit_params = {
                        "split": split,
                        "lang": lang,
                        "number": number,
                        "increment": increment,
                        "ranges": ranges,
                        "threshold": threshold,
                        "docs": docs,
                        "seed": params.seed,
                        "token_type": ids_type,
                        "row_group_tokens": params.row_group_tokens,
                    }
                    if drop := dropped.drops_in(found, lo, hi):
                        unit_params["drop"] = drop
                    inputs = {
                        "tokenizer": {TOKENIZER_FILE: Input(run.stage(VOCAB).child(TOKENIZER_FILE).uri, tok_sha)},
                        "langid": {p: Input(langid_loc.child(p).uri, langid.file(p).sha256) for p, _, _ in ranges},
                    }
                    units.append(
                        Unit(
                            stage=STAGE,
                            name=f"{split}/{name}",
                            out=run.unit(STAGE, name, group=split).uri,
                            code_version=code,
                            params=unit_params,
                            inputs=inputs,
                            options={"batch_docs": params.batch_docs},
                        )
                    )
                numbers[split] += len(cuts)
    if not units:
        raise ValueError(
            f"{langid_loc}: no clean documents in a language the vocabulary has a tag for; "
            f"check the langid and vocab stages"
        )
    tokenizer = Input(run.stage(VOCAB).child(TOKENIZER_FILE).uri, tok_sha)
    valid = [u for u in units if u.params["split"] == "valid"]
    return units + pairs.plan_pairs(run, params.parallel, tokenizer, ids_type, code, valid)


def _tokenizer_of(run: RunDir) -> tuple[str, Tokenizer]:
    vocab_loc = run.stage(VOCAB)
    vocab = load_output(vocab_loc, VOCAB)
    try:
        entry = vocab.file(TOKENIZER_FILE)
    except KeyError:
        raise ValueError(f"{vocab_loc}: the vocab stage lists no {TOKENIZER_FILE}; rerun the vocab stage") from None
    return entry.sha256, load_tokenizer(vocab_loc)


# ---------------------------------------------------------------- one unit: read -> tokenise -> write
def shard_unit(unit: Unit) -> Ref:
    """Tokenise one shard's documents (its row ranges, filtered to its split) into one Parquet file; or, for a
    pairs unit, one parallel set's train part (:mod:`.pairs`)."""
    if unit.params["split"] == PAIRS:
        return pairs.pairs_unit(unit)
    p = unit.params
    tokenizer, split, lang = unit.input("tokenizer"), p["split"], p["lang"]
    vocab_loc = Location(tokenizer.uri).parent

    def build(aside: Aside) -> dict[str, Any]:
        tok = load_tokenizer(vocab_loc, tokenizer.fingerprint)
        tag_id, eos_id = tok.token_to_id(lang_tag(lang)), tok.token_to_id(EOS)
        if tag_id is None or eos_id is None:
            raise ValueError(
                f"{vocab_loc}: the tokenizer lacks {lang_tag(lang) if tag_id is None else EOS}; rerun the vocab stage"
            )
        ids_type = pa.type_for_alias(p["token_type"])
        if token_type(tok.get_vocab_size(with_added_tokens=True)) != ids_type:
            raise ValueError(f"{vocab_loc}: the tokenizer changed since planning; rerun the shard stage")
        name = shard_file(split, lang, p["number"])
        writer = FileWriter(aside.path(name), shard_schema(ids_type), weight=("n_tokens", p["row_group_tokens"]))
        docs = empty = 0
        gone = {"documents": 0}
        for batch in _documents(unit, unit.options["batch_docs"], gone):
            ids, n_tokens = tokenize(tok, batch.column("text"), tag_id, eos_id, ids_type)
            keep = n_tokens > 2
            empty += int((~keep).sum())
            table = pa.table(
                {
                    "input_ids": ids,
                    "n_tokens": n_tokens,
                    "lang": pa.repeat(pa.scalar(lang), len(ids)),
                    "doc_id": batch.column("doc_id"),
                },
                schema=writer.schema,
            )
            if not keep.all():
                table = table.filter(pa.array(keep))
            docs += table.num_rows
            writer.write(table)
        writer.close()
        tokens = writer.weighed
        if docs + empty + gone["documents"] != p["docs"]:
            raise RuntimeError(
                f"{unit.name}: read {docs + empty} documents, the plan says {p['docs']}; "
                f"the langid output changed while sharding: rerun"
            )
        if empty:
            logger().warning("%s: dropped %d documents that tokenise to nothing", unit.name, empty)
        return {
            "documents": {split: {lang: docs}},
            "tokens": {split: {lang: tokens}},
            "empty_dropped": empty,
            **({"removed_dropped": gone["documents"]} if "drop" in p else {}),
            "row_groups": writer.row_groups,
        }

    return ensure(unit, build)


def _documents(unit: Unit, batch_docs: int, gone: dict[str, int]) -> Iterator[pa.RecordBatch]:
    """The shard's documents in input order, in batches of about ``batch_docs``, split by hash; those of the
    inputs in its ``drop`` parameter (:mod:`.dropped`) left out and counted in ``gone``."""
    p, files = unit.params, unit.inputs["langid"]
    columns = ["doc_id", "text", "source"] if p.get("drop") else ["doc_id", "text"]
    pending: list[pa.RecordBatch] = []
    rows = 0
    for path, start, stop in p["ranges"]:
        loc = Location(files[path].uri)
        for batch in read_batches(loc, columns, batch_docs, start, stop):
            check_ids(batch.column(0), loc, start)
            is_valid = stable_hashes(batch.column(0), p["seed"]) < p["threshold"]
            batch = batch.filter(pa.array(is_valid if p["split"] == "valid" else ~is_valid))
            if p.get("drop"):
                keep = ~from_inputs(batch, p["drop"])
                gone["documents"] += int((~keep).sum())
                batch = batch.filter(pa.array(keep)).select(["doc_id", "text"])
            pending.append(batch)
            rows += batch.num_rows
            if rows >= batch_docs:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, rows = [], 0
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


# ---------------------------------------------------------------- the stage commit: manifest, index, totals
def stage_for(run: RunDir, params: ShardParams, refs: list[Ref]) -> Unit:
    """The stage unit: its units' fingerprints plus the vocabulary's and the clean corpus's."""
    vocab, langid = read_manifest(run.stage(VOCAB)), read_manifest(run.stage(LANGID))
    tok_sha = vocab.file(TOKENIZER_FILE).sha256 if vocab else ""
    return stage_unit(
        run.stage(STAGE).uri,
        STAGE,
        refs,
        code_version(__name__),
        params.model_dump(exclude={"batch_docs", "parallel"}),  # the pair units hash the sets' content
        inputs={
            "vocab": {"stage": Input(run.stage(VOCAB).uri, vocab.fingerprint if vocab else "")},
            "tokenizer": {TOKENIZER_FILE: Input(run.stage(VOCAB).child(TOKENIZER_FILE).uri, tok_sha)},
            "langid": {"stage": Input(run.stage(LANGID).uri, langid.fingerprint if langid else "")},
        },
    )


def commit_shards(unit: Unit, refs: list[Ref]) -> Ref:
    """Commit the stage: every shard file in the manifest, ``shards.json``, totals per split and language."""

    def build(aside: Aside) -> dict[str, Any]:
        rows, pair_rows, token_type_name, left_out = [], [], None, {"inputs": set(), "documents": 0}
        for ref in refs:
            m = unit_manifest(ref)
            left_out["inputs"].update(m.params.get("drop", []))
            left_out["documents"] += m.stats.get("removed_dropped", 0)
            token_type_name = m.params["token_type"]
            f = next(e for e in m.files if e.path.endswith(".parquet"))
            rel = relative(unit.out, Location(ref.uri).child(f.path).uri)
            if m.params["split"] == PAIRS:
                pair_rows.append({"path": rel, "rows": f.rows, "sha256": f.sha256, **m.stats})
                continue
            split, lang = m.params["split"], m.params["lang"]
            rows.append(
                {
                    "path": rel,
                    "split": split,
                    "lang": lang,
                    "rows": f.rows,
                    "bytes": f.bytes,
                    "sha256": f.sha256,
                    "tokens": m.stats["tokens"][split][lang],
                    "fingerprint": m.fingerprint,
                    "increment": m.params.get("increment", 1),
                }
            )
        rows.sort(key=lambda r: r["path"])
        totals = _totals(rows)
        tok_sha, vocab_fp = unit.input("tokenizer").fingerprint, unit.input("vocab").fingerprint
        langid_loc = Location(unit.input("langid").uri)
        index = {
            "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok_sha, "vocab_fingerprint": vocab_fp},
            "token_type": token_type_name,
            "shards": rows,
            "totals": totals,
            "pairs": sorted(pair_rows, key=lambda r: r["path"]),
            "increments": _increments(read_ledger(langid_loc), rows),
            "untagged": _untagged(langid_loc, Location(unit.input("tokenizer").uri).parent),
        }
        if left_out["inputs"]:  # drop_removed: the documents of input files gone from the sources
            index["removed"] = {"inputs": sorted(left_out["inputs"]), "documents": left_out["documents"]}
        with aside.path(INDEX).open("wb") as out:
            out.write(_json(index))
        return {
            "totals": totals,
            "tokens_total": sum(r["tokens"] for r in rows),
            "token_type": token_type_name,
            "tokenizer_sha256": tok_sha,
            "languages": sorted({r["lang"] for r in rows}),
        }

    return commit_stage(unit, refs, build)


def _increments(ledger: dict | None, rows: list[dict]) -> list[dict[str, Any]]:
    """Per increment (the langid ledger's): its number, date, input files and the tokens its shards hold."""
    out = []
    for entry in (ledger or {}).get("increments", []):
        tokens: dict[str, dict[str, int]] = {}
        for r in rows:
            if r["increment"] == entry["number"]:
                by_lang = tokens.setdefault(r["split"], {})
                by_lang[r["lang"]] = by_lang.get(r["lang"], 0) + r["tokens"]
        out.append(
            {"number": entry["number"], "date": entry["date"], "inputs": sorted(entry["inputs"]), "tokens": tokens}
        )
    return out


def _untagged(langid_loc: Location, vocab_loc: Location) -> dict[str, int]:
    """Clean documents of the languages the tokenizer has no tag for (left out of the shards)."""
    return untagged(partitions(load_output(langid_loc, LANGID), "clean"), load_tokenizer(vocab_loc))


def _totals(rows: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    df = pl.DataFrame(
        rows,
        schema={
            "split": pl.String,
            "lang": pl.String,
            "rows": pl.Int64,
            "tokens": pl.Int64,
            "bytes": pl.Int64,
            "path": pl.String,
        },
    )
    agg = (
        df.group_by("split", "lang")
        .agg(
            pl.len().alias("shards"),
            pl.col("rows").sum().alias("documents"),
            pl.col("tokens").sum(),
            pl.col("bytes").sum(),
        )
        .sort("split", "lang")
    )
    out: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SPLITS}
    for r in agg.iter_rows(named=True):
        out[r["split"]][r["lang"]] = {k: r[k] for k in ("shards", "documents", "tokens", "bytes")}
    return out


def _json(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


# ---------------------------------------------------------------- Prefect tasks
plan_task = plain_step("shard-plan")(plan)
shard_task = step(name="shard-file")(shard_unit)
commit_task = step(name="shard-commit")(commit_shards)
