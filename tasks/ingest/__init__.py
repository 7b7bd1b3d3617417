"""Ingest: any text source -> normalised documents in Parquet, one unit per input file.

Reads plain text, JSON lines (also .gz/.zst/.bz2/.xz), Parquet, Hugging Face
datasets saved with ``save_to_disk`` or named for ``datasets.load_dataset``, from
local paths, directories, globs or any fsspec URL. Each document gets NFC-normalised
text with control characters stripped (tab and newline kept), a stable ``doc_id``
(``<hash of the source's position and the input's name in it>-<record number>``), its source,
its claimed language and its other fields as JSON metadata.

Records that cannot be read are quarantined with their reason (``bad_records =
"quarantine"``, the default) or fail the file with an error naming file and record
(``"fail"``); either way the count is reported, and a bad record never drops a file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
from fsspec.core import url_to_fs

from xlmflow.storage import (
    Aside,
    Location,
    PartWriter,
    RunDir,
    code_version,
    file_sha256,
    hash_json,
    resolve,
    tree_sha256,
)
from xlmflow.tasks.common import progress
from xlmflow.tasks.common.inputs import input_name
from xlmflow.tasks.common.runtime import Input, Ref, Unit, commit_stage, ensure, logger, plain_step, stage_unit, step
from xlmflow.tasks.ingest import readers
from xlmflow.tasks.ingest.params import IngestParams, Source
from xlmflow.tasks.ingest.readers import Batch, InputError
from xlmflow.tasks.ingest.zstd import ZstdReader

STAGE = "ingest"
READS: tuple[str, ...] = ()  # the first stage: it reads sources, no stage
EXTENSIONS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")

DOCS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.large_string()),
        ("claimed_lang", pa.string()),
        ("source", pa.string()),
        ("record", pa.int64()),
        ("meta", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [("source", pa.string()), ("record", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)
CONTROL_CHARS = r"[\p{Cc}--[\t\n]]"


# ---------------------------------------------------------------- planning: inputs -> units
def plan(run: RunDir, params: IngestParams) -> list[Unit]:
    """Expand every source into input files and make one fingerprinted unit per file."""
    if not params.sources:
        raise InputError(
            "ingest: no sources configured; name at least one (--source PATH, or [[ingest.sources]] in the config file)"
        )
    code = code_version(__name__)
    units: list[Unit] = []
    for index, source in enumerate(params.sources):
        for uri, rel, fmt in expand(source):
            revision = hub_revision(uri, source) if fmt == "hf" else None
            fp = _content_fingerprint(uri, fmt, source, revision)
            key = input_key(index, rel)
            name = input_name(rel, key)
            unit_params = {
                "source": source.model_dump(exclude={"path"}),
                "format": fmt,
                "rel": rel,
                "key": key,
                "bad_records": params.bad_records,
                "part_mb": params.part_mb,
            }
            if fmt == "hf":  # the commit read: a new upstream version is a new unit
                unit_params["revision"] = revision
            units.append(
                Unit(
                    stage=STAGE,
                    name=name,
                    out=run.unit(STAGE, name).uri,
                    code_version=code,
                    params=unit_params,
                    inputs={"input": {rel: Input(uri, fp)}},
                )
            )
    uris = [u.input("input").uri for u in units]
    if len(set(uris)) != len(uris):
        raise InputError("the same input file is named by two sources; list each file once")
    return units


def input_key(source_index: int, rel: str) -> str:
    """An input's identity in the run: its source's position and its name inside that source.

    Names units and prefixes doc ids. It holds no absolute path, so moving the corpus
    or the clone changes no fingerprint, and two sources that both hold ``en.txt`` do
    not collide."""
    return hashlib.blake2b(f"{source_index}:{rel}".encode(), digest_size=6).hexdigest()


def expand(source: Source) -> list[tuple[str, str, str]]:
    """(uri, name within the source, format) for every input file the source names."""
    if source.format == "hf" or source.path.startswith("hf:"):
        name = source.path.removeprefix("hf:")
        return [(name, f"hf-{name}-{source.config or ''}-{source.split or 'all'}", "hf")]
    fs, path = url_to_fs(resolve(source.path))
    if fs.isdir(path) and source.format in ("auto", "hf-disk") and _is_saved_dataset(fs, path):
        return [(_uri(fs, path), posixpath.basename(path.rstrip("/")), "hf-disk")]
    if any(ch in path for ch in "*?["):
        found, base = sorted(fs.glob(path)), path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    elif fs.isdir(path):
        found, base = sorted(fs.find(path)), path.rstrip("/")
    elif fs.exists(path):
        found, base = [path], path.rsplit("/", 1)[0] if "/" in path else ""
    else:
        raise InputError(
            f"source {source.path!r}: no such file or folder; check the path "
            f"(relative paths start from the current folder) or the fsspec URL"
        )
    files = []
    for p in found:
        if fs.isdir(p) or posixpath.basename(p).startswith("."):
            continue
        fmt = source.format if source.format != "auto" else _format_of(p)
        if fmt is None:
            if source.format == "auto" and not fs.isdir(path) and "*" not in path:
                raise InputError(f"{p}: unknown format; name one with format (text, jsonl, parquet, hf-disk, hf)")
            continue  # folders and globs skip files they cannot read (README, licences)
        rel = p[len(base) :].lstrip("/") if base and p.startswith(base) else posixpath.basename(p)
        files.append((_uri(fs, p), rel, fmt))
    if not files:
        raise InputError(
            f"source {source.path!r}: matched no readable input files "
            f"({', '.join(sorted(EXTENSIONS))}, optionally compressed {', '.join(COMPRESSIONS)})"
        )
    return files


def _format_of(path: str) -> str | None:
    p = path.lower()
    for c in COMPRESSIONS:
        p = p.removesuffix(c)
    return EXTENSIONS.get(posixpath.splitext(p)[1])


def _is_saved_dataset(fs, path: str) -> bool:
    return fs.exists(f"{path}/state.json") or fs.exists(f"{path}/dataset_dict.json")


def _uri(fs, path: str) -> str:
    return Location.of(fs.unstrip_protocol(path)).uri


def _content_fingerprint(uri: str, fmt: str, source: Source, revision: str | None = None) -> str:
    if fmt == "hf":  # a hub dataset is known by name and commit; local folders by content
        fs, path = url_to_fs(uri)
        if fs.isdir(path):
            return tree_sha256(fs, path)
        return hash_json(["hf", uri, source.config, source.split, revision or source.revision])
    loc = Location(uri)
    try:
        return tree_sha256(loc.fs, loc.path) if fmt == "hf-disk" else file_sha256(loc.fs, loc.path)[0]
    except (PermissionError, IsADirectoryError) as e:
        raise InputError(f"{uri}: cannot be read ({e}); check its permissions") from e


def is_hub_name(name: str) -> bool:
    """Whether ``hf:NAME`` names a Hugging Face Hub dataset (``owner/name``), not a local folder,
    a loading script or a packaged builder (``json``, ``parquet``, ...) reading local files."""
    if "://" in name or os.path.exists(name):
        return False
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return name not in _PACKAGED_DATASETS_MODULES and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def hub_revision(name: str, source: Source) -> str | None:
    """The commit a hub dataset is read at: the configured ``revision``, else the one the Hub names now.

    Without it a hub dataset's key would be its name only, and a new upstream version would be
    served from cache as the old one. Resolved when planning (one metadata request); the unit
    then reads exactly that commit. Offline there is no way to know the current commit, and the
    local cache is not a substitute (a streamed dataset is not cached), so the user pins one."""
    if source.revision or not is_hub_name(name):
        return source.revision
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        sha = huggingface_hub.HfApi().dataset_info(name, timeout=30).sha
    except RepositoryNotFoundError as e:
        raise InputError(
            f"hf:{name}: no such dataset on the Hugging Face Hub (or it is private: log in with `hf auth login`); "
            f"check the name"
        ) from e
    except Exception as e:  # offline, network, gated
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(
            f"hf:{name}: cannot resolve the dataset's current commit on the Hugging Face Hub ({first}); "
            f'connect, or pin revision = "<commit sha or tag>" in the source\'s [[ingest.sources]] table'
        ) from e
    if not sha:
        raise InputError(f"hf:{name}: the Hub named no commit for the dataset; pin revision in its source")
    return sha


# ---------------------------------------------------------------- one unit: read -> normalise -> write
def ingest_unit(unit: Unit) -> Ref:
    """Read one input file and commit its documents (and quarantined records) to the unit's folder."""
    uri = unit.input("input").uri
    source = Source(path=uri, **unit.params["source"])
    fmt, rel, key = unit.params["format"], unit.params["rel"], unit.params["key"]
    strict = unit.params["bad_records"] == "fail"
    part_bytes = unit.params["part_mb"] << 20
    source = source.model_copy(update={"revision": unit.params.get("revision") or source.revision})
    what = "line" if fmt in ("text", "jsonl") else "row"

    def build(aside: Aside) -> dict:
        docs = PartWriter(aside.path, DOCS_SCHEMA, max_bytes=part_bytes)
        bad = PartWriter(aside.path, QUARANTINE_SCHEMA, prefix="quarantine")  # streamed: a bad file never fills memory
        n_bad, first_reason = 0, None
        per_lang: dict[str, int] = {}
        last = [-1]  # the last record number written: they must rise, or doc ids would repeat
        for batch in batches(uri, fmt, source, readers.BATCH_ROWS):
            batch = readers.without_nul(batch, what)
            for record, reason, raw in batch.bad:
                if strict:
                    raise InputError(
                        f"{uri}: {reason}. Fix the record, or set bad_records="
                        f"'quarantine' (--bad-records quarantine) to set it aside and go on"
                    )
            if batch.bad:
                records, reasons, raws = zip(*batch.bad)
                bad.write(
                    pa.table(
                        {"source": [rel] * len(records), "record": records, "reason": reasons, "raw": raws},
                        schema=QUARANTINE_SCHEMA,
                    )
                )
                n_bad, first_reason = n_bad + len(records), first_reason or reasons[0]
            table = to_documents(batch, rel, key, source.lang)
            last[0] = check_rising(table.column("record").to_numpy(), last[0], uri)
            for lang, n in (
                pl.from_arrow(table.select(["claimed_lang"])).group_by("claimed_lang").len().fill_null("und").rows()
            ):
                per_lang[lang] = per_lang.get(lang, 0) + n
            docs.write(table)
        docs.close()
        bad.close()
        n_docs = sum(per_lang.values())
        if n_docs == 0 and not n_bad:
            raise InputError(
                f"{uri}: no documents found; check the format ({fmt}), "
                f"text_field ({source.text_field!r}) and that the file is not empty"
            )
        if n_docs == 0:  # every record bad: a wrong text_field or format, not a few damaged records
            raise InputError(
                f"{uri}: none of its {n_bad} records could be read (first: {first_reason}); check the format "
                f"({fmt}) and text_field ({source.text_field!r}), or remove the file from the source"
            )
        if n_bad:
            logger().warning("%s: quarantined %d bad records (first: %s)", uri, n_bad, first_reason)
            progress.note(f"ingest: {uri}: quarantined {n_bad} bad records (first: {first_reason})")
        return {"documents": n_docs, "quarantined": n_bad, "claimed_lang": dict(sorted(per_lang.items()))}

    return ensure(unit, build)


def check_rising(records: np.ndarray, last: int, uri: str) -> int:
    """Record numbers must rise strictly through an input, so its doc ids (``<key>-<record>``) are
    unique; a reader that numbered two records alike would silently merge documents downstream.
    One vectorised comparison per batch. Returns the batch's last record number."""
    if not len(records):
        return last
    if records[0] <= last or (len(records) > 1 and not (np.diff(records) > 0).all()):
        raise RuntimeError(
            f"{uri}: record numbers do not rise (record {records[0]} after {last}), so doc ids would repeat; "
            f"this is a bug in xlmflow's reader: please report it with the input's format"
        )
    return int(records[-1])


def batches(uri: str, fmt: str, source: Source, batch_rows: int) -> Iterator[Batch]:
    """Stream one input as :class:`Batch` es, whatever its format."""
    if fmt in ("hf", "hf-disk"):
        yield from _dataset_batches(uri, fmt, source, batch_rows)
        return
    loc = Location(uri)
    zst = loc.path.lower().endswith(".zst")  # read by ZstdReader, which notices a truncated file
    try:
        with loc.fs.open(loc.path, "rb", compression=None if zst else "infer") as raw:
            f = ZstdReader(raw, uri) if zst else raw
            if fmt == "text":
                yield from readers.read_text(f, uri, source.paragraphs, batch_rows)
            elif fmt == "jsonl":
                yield from readers.read_jsonl(f, uri, source.text_field, source.lang_field, batch_rows)
            elif fmt == "parquet":
                schema, it = readers.parquet_batches(f, uri, batch_rows)
                yield from readers.read_arrow(it, schema, uri, source.text_field, source.lang_field)
            else:
                raise InputError(f"{uri}: unknown format {fmt!r}")
    except FileNotFoundError as e:
        raise InputError(f"{uri}: file vanished while reading; check the source path") from e
    except PermissionError as e:
        raise InputError(f"{uri}: cannot be read ({e}); check its permissions") from e
    except (EOFError, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{uri}: unreadable ({e}); is it truncated or in another compression format?") from e


def _dataset_batches(uri: str, fmt: str, source: Source, batch_rows: int) -> Iterator[Batch]:
    import datasets

    if fmt == "hf-disk":
        ds = datasets.load_from_disk(uri)
    else:  # a hub name (online users) or a local folder/builder such as "json" with data_files
        ds = datasets.load_dataset(
            uri,
            source.config,
            split=source.split,
            revision=source.revision,
            streaming=not Location.of(uri).is_dir() if "://" not in uri else True,
        )
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = [source.split] if source.split else sorted(ds)
        missing = [s for s in splits if s not in ds]
        if missing:
            raise InputError(f"{uri}: no split {missing[0]!r} (splits: {', '.join(sorted(ds))}); set split")
        parts = [ds[s] for s in splits]
    else:
        parts = [ds]
    offset = 0  # numbered on across splits: row 0 of "test" is not row 0 of "train" (one doc id each)
    for part in parts:
        schema, it = readers.dataset_batches(part, batch_rows)
        offset = yield from readers.read_arrow(it, schema, uri, source.text_field, source.lang_field, offset)


def to_documents(batch: Batch, rel: str, key: str, default_lang: str | None) -> pa.Table:
    """Columns of one batch -> the documents schema, normalised with vectorised polars calls."""
    n = len(batch.text)
    df = pl.DataFrame(
        {
            "text": pl.Series("text", batch.text, dtype=pl.String),
            "claimed_lang": pl.Series(
                "claimed_lang", batch.lang if batch.lang is not None else [None] * n, dtype=pl.String
            ),
            "record": pl.Series("record", batch.record, dtype=pl.Int64),
            "meta": pl.Series("meta", batch.meta if batch.meta is not None else [None] * n, dtype=pl.String),
        }
    )
    df = df.with_columns(
        pl.col("text").str.normalize("NFC").str.replace_all(CONTROL_CHARS, ""),
        pl.col("claimed_lang").fill_null(pl.lit(default_lang, dtype=pl.String)),
        pl.lit(rel).alias("source"),
        pl.format("{}-{}", pl.lit(key), pl.col("record")).alias("doc_id"),
    )
    return df.select(DOCS_SCHEMA.names).to_arrow().cast(DOCS_SCHEMA)


# ---------------------------------------------------------------- Prefect tasks
plan_task = plain_step("ingest-plan")(plan)
ingest_file = step(name="ingest-file")(ingest_unit)
commit_task = step(name="ingest-commit")(commit_stage)


def stage_for(run: RunDir, params: IngestParams, refs: list[Ref]) -> Unit:
    """The stage commit; source paths stay out of its params (the units carry their inputs' content)."""
    return stage_unit(
        run.stage(STAGE).uri,
        STAGE,
        refs,
        code_version(__name__),
        params.model_dump(exclude={"sources": {"__all__": {"path"}}}),
    )
