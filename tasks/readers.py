"""Format readers for the ingest stage: each streams one input as column batches.

A reader yields :class:`Batch` es: parallel columns of raw text, claimed language,
record locator (line or row number) and metadata (a JSON string), plus the records
it could not read, each with its reason. Nothing here holds a whole file: text and
JSONL are read in blocks of lines, Parquet and datasets in record batches.
Record-level defects (invalid UTF-8, a malformed JSON line, a missing text field)
are reported per record; file-level ones raise :class:`InputError` naming the file
and what to do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterator

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

BLOCK_BYTES = 8 << 20
BATCH_ROWS = 8192


class InputError(ValueError):
    """Input that cannot be read at all; the message names the file and what to do."""


@dataclass
class Batch:
    text: list[Any] | pa.Array
    record: list[int] | pa.Array
    lang: list[Any] | pa.Array | None = None
    meta: list[Any] | pa.Array | None = None
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (record, reason, raw excerpt)


def excerpt(raw: bytes | str, limit: int = 500) -> str:
    if isinstance(raw, bytes):
        raw = raw[: limit * 4].decode("utf-8", errors="backslashreplace")
    return raw[:limit]


# ---------------------------------------------------------------- plain text
def read_text(f: io.BufferedIOBase, name: str, paragraphs: bool, batch_rows: int) -> Iterator[Batch]:
    """One document per line, or per blank-line-separated paragraph; records are 1-based line numbers."""
    texts: list[str] = []
    records: list[int] = []
    bad: list[tuple[int, str, str]] = []
    para: list[str] = []
    para_start = 0
    for lineno, raw in enumerate(_lines(f), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append((lineno, f"invalid UTF-8 at byte {e.start} of line {lineno}", excerpt(raw)))
            continue
        if lineno == 1:
            line = line.lstrip("\ufeff")
        if paragraphs:
            if line.strip():
                if not para:
                    para_start = lineno
                para.append(line)
                continue
            if para:
                texts.append("\n".join(para))
                records.append(para_start)
                para = []
        elif line.strip():
            texts.append(line)
            records.append(lineno)
        if len(texts) >= batch_rows:
            yield Batch(texts, records, bad=bad)
            texts, records, bad = [], [], []
    if para:
        texts.append("\n".join(para))
        records.append(para_start)
    if texts or bad:
        yield Batch(texts, records, bad=bad)


def _lines(f) -> Iterator[bytes]:
    """Lines without their ending, read in large blocks (a 50 MB line is fine)."""
    rest = b""
    while block := f.read(BLOCK_BYTES):
        block = rest + block
        lines = block.split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line.rstrip(b"\r")
    if rest:
        yield rest.rstrip(b"\r")


# ---------------------------------------------------------------- JSON lines
def read_jsonl(f, name: str, text_field: str, lang_field: str | None, batch_rows: int) -> Iterator[Batch]:
    """One JSON object per line; other fields are kept as the ``meta`` JSON string."""
    texts, langs, metas, records = [], [], [], []
    bad: list[tuple[int, str, str]] = []
    for lineno, raw in enumerate(_lines(f), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            reason = "invalid UTF-8" if _bad_utf8(raw) else f"malformed JSON ({e})"
            bad.append((lineno, f"line {lineno}: {reason}", excerpt(raw)))
            continue
        if not isinstance(obj, dict):
            bad.append((lineno, f"line {lineno}: expected a JSON object, got {type(obj).__name__}", excerpt(raw)))
            continue
        text = obj.pop(text_field, None)
        if not isinstance(text, str):
            what = "missing" if text is None else f"a {type(text).__name__}, not a string"
            bad.append(
                (
                    lineno,
                    f"line {lineno}: field {text_field!r} is {what} (keys: {', '.join(sorted(obj))[:200]}); "
                    f"set text_field to the field holding the text",
                    excerpt(raw),
                )
            )
            continue
        lang = obj.pop(lang_field, None) if lang_field else None
        texts.append(text)
        langs.append(lang if isinstance(lang, str) else None)
        metas.append(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode() if obj else None)
        records.append(lineno)
        if len(texts) >= batch_rows:
            yield Batch(texts, records, langs, metas, bad)
            texts, langs, metas, records, bad = [], [], [], [], []
    if texts or bad:
        yield Batch(texts, records, langs, metas, bad)


def _bad_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# ---------------------------------------------------------------- Arrow tables (Parquet, datasets)
def read_arrow(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, name: str, text_field: str, lang_field: str | None
) -> Iterator[Batch]:
    """Columns straight from Arrow: the text column, the language column if any, the rest as JSON meta."""
    if text_field not in schema.names:
        raise InputError(
            f"{name}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
            f"pass the name of the text column as text_field (--text-field)"
        )
    if not (
        pa.types.is_string(schema.field(text_field).type) or pa.types.is_large_string(schema.field(text_field).type)
    ):
        raise InputError(
            f"{name}: column {text_field!r} is {schema.field(text_field).type}, not text; "
            f"pick the column that holds the documents' text"
        )
    lang_field = lang_field if lang_field in schema.names else None
    offset = 0
    for rb in batches:
        df = pl.from_arrow(rb)
        if not isinstance(df, pl.DataFrame):
            df = df.to_frame()
        records = pa.array(range(offset, offset + rb.num_rows), pa.int64())
        offset += rb.num_rows
        rest = [c for c in df.columns if c not in (text_field, lang_field)]
        meta = df.select(pl.struct(rest).struct.json_encode()).to_series().to_arrow() if rest else None
        text = df.get_column(text_field)
        missing = text.is_null()
        bad = []
        if missing.any():
            rows = pl.Series(records.to_numpy()).filter(missing).to_list()
            bad = [(r, f"row {r}: {text_field!r} is null", "") for r in rows]
        keep = ~missing
        yield Batch(
            text=text.filter(keep).to_arrow(),
            record=pl.Series(records.to_numpy()).filter(keep).to_arrow(),
            lang=df.get_column(lang_field).cast(pl.String).filter(keep).to_arrow() if lang_field else None,
            meta=pl.Series(meta).filter(keep).to_arrow() if meta is not None else None,
            bad=bad,
        )


def parquet_batches(f, name: str, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(
            f"{name}: not a readable Parquet file ({e}); check that it is Parquet or set the source's format explicitly"
        ) from e
    return pf.schema_arrow, pf.iter_batches(batch_size=batch_rows)


def dataset_batches(ds, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Record batches of a ``datasets.Dataset`` (in memory-mapped Arrow) or an ``IterableDataset``."""
    import datasets

    if isinstance(ds, datasets.Dataset):  # map-style: memory-mapped Arrow on disk
        arrow = ds.with_format("arrow")
        return ds.features.arrow_schema, (rb for t in arrow.iter(batch_size=batch_rows) for rb in t.to_batches())

    def gen():  # streaming (hub): fixed-size blocks of rows
        for block in ds.iter(batch_size=batch_rows):
            yield pa.RecordBatch.from_pydict(block)

    first = next(iter(ds.iter(batch_size=1)), None)
    if first is None:
        return pa.schema([]), iter(())
    return pa.RecordBatch.from_pydict(first).schema, gen()
