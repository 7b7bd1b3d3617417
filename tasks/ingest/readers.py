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
from typing import Any, Generator, Iterator

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

BLOCK_BYTES = 8 << 20
BATCH_ROWS = 8192
BAD_ROWS = 1024  # quarantined records are handed on after this many ...
BAD_BYTES = 1 << 20  # ... or this many bytes of reasons and excerpts: an all-bad file never fills memory
MAX_LINE_BYTES = 64 << 20  # a longer line is quarantined unread (skipped block by block), not held in memory
SNIFF_BYTES = 8192
#: leading bytes of formats that are not text: a .txt file starting so is a mistake, never documents
MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"\x1f\x8b": "gzip-compressed data (name it .gz)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed data (name it .zst)",
    b"\xfd7zXZ\x00": "xz-compressed data (name it .xz)",
    b"PAR1": "a Parquet file (name it .parquet)",
}


class InputError(ValueError):
    """Input that cannot be read at all; the message names the file and what to do."""


@dataclass
class Batch:
    """Parallel columns of good records (possibly none) and the bad records met since the last batch."""

    text: list[Any] | pa.Array
    record: list[int] | pa.Array
    lang: list[Any] | pa.Array | None = None
    meta: list[Any] | pa.Array | None = None
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (record, reason, raw excerpt)


def excerpt(raw: bytes | str, limit: int = 500) -> str:
    """At most ``limit`` characters of a bad record: enough to find it, and bounded whatever its size."""
    if isinstance(raw, bytes):
        raw = raw[: limit * 4].decode("utf-8", errors="backslashreplace")
    return raw[:limit]


class Quarantine:
    """Bad records met while reading, handed on by count and bytes so that a file of bad records
    streams through in bounded memory instead of waiting for ``batch_rows`` good records."""

    def __init__(self):
        self.records: list[tuple[int, str, str]] = []
        self.bytes = 0

    def add(self, record: int, reason: str, raw: str) -> None:
        self.records.append((record, reason, raw))
        self.bytes += len(reason) + len(raw)

    @property
    def full(self) -> bool:
        return len(self.records) >= BAD_ROWS or self.bytes >= BAD_BYTES

    def take(self) -> list[tuple[int, str, str]]:
        out, self.records, self.bytes = self.records, [], 0
        return out


def too_long(lineno: int) -> tuple[int, str, str]:
    return (
        lineno,
        f"line {lineno}: longer than {MAX_LINE_BYTES >> 20} MB, not read; split the record into smaller ones",
        "",
    )


# ---------------------------------------------------------------- plain text
def read_text(f: io.BufferedIOBase, name: str, paragraphs: bool, batch_rows: int) -> Iterator[Batch]:
    """One document per line, or per blank-line-separated paragraph; records are 1-based line numbers."""
    texts: list[str] = []
    records: list[int] = []
    bad = Quarantine()
    para: list[str] = []
    para_start = 0
    for lineno, raw in enumerate(_lines(f, name), start=1):
        if bad.full:
            yield Batch([], [], bad=bad.take())
        if raw is None:
            bad.add(*too_long(lineno))
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.add(lineno, f"invalid UTF-8 at byte {e.start} of line {lineno}", excerpt(raw))
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
            yield Batch(texts, records, bad=bad.take())
            texts, records = [], []
    if para:
        texts.append("\n".join(para))
        records.append(para_start)
    if texts or bad.records:
        yield Batch(texts, records, bad=bad.take())


def _lines(f, name: str) -> Iterator[bytes | None]:
    """Lines without their ending, read in large blocks; None for a line over :data:`MAX_LINE_BYTES`.

    A line spanning blocks is gathered as a list of pieces (joined once: no quadratic copying);
    one that grows past the limit is skipped to its end without being held, so memory stays
    bounded by the limit whatever the file. The first block is sniffed (:func:`sniff`)."""
    pieces: list[bytes] = []  # the start of a line that spans blocks
    held, skipping, first = 0, False, True
    while block := f.read(BLOCK_BYTES):
        if first:
            sniff(block, name)
            first = False
        lines = block.split(b"\n")
        last = lines.pop()
        for i, line in enumerate(lines):
            if i == 0 and (pieces or skipping):
                if skipping:
                    skipping = False
                    yield None
                    continue
                line, pieces, held = b"".join(pieces) + line, [], 0
                if len(line) > MAX_LINE_BYTES:
                    yield None
                    continue
            yield line.rstrip(b"\r")
        if skipping:
            continue
        pieces.append(last)
        held += len(last)
        if held > MAX_LINE_BYTES:
            pieces, held, skipping = [], 0, True
    if skipping:
        yield None
    elif pieces and (rest := b"".join(pieces)):
        yield rest.rstrip(b"\r")


def sniff(head: bytes, name: str) -> None:
    """Refuse input that is not UTF-8 text at all (UTF-16/32, an image, an archive, random bytes):
    read line by line it would become garbage documents or a flood of quarantined lines."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise InputError(
            f"{name}: starts with a UTF-16/UTF-32 byte order mark; xlmflow reads UTF-8 text: "
            f"convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 IN > OUT)"
        )
    sample = head[:SNIFF_BYTES]
    for magic, what in MAGIC.items():
        if sample.startswith(magic):
            raise InputError(f"{name}: holds {what}, not UTF-8 text; remove it from the source or fix its name")
    nul = sample.count(0)
    if len(sample) >= 16 and nul * 4 >= len(sample):  # one byte in four is NUL: UTF-16 without a BOM, or binary
        if any(h.count(0) * 10 >= len(h) * 9 for h in (sample[0::2], sample[1::2])):  # ASCII-range UTF-16
            raise InputError(
                f"{name}: looks like UTF-16 text (every other byte is NUL); xlmflow reads UTF-8: convert it "
                f"to UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8 IN > OUT)"
            )
        raise InputError(
            f"{name}: looks like binary data ({nul} NUL bytes in its first {len(sample)}), not UTF-8 text; "
            f"remove it from the source"
        )
    bad = sample.decode("utf-8", errors="replace").count("\ufffd")
    if len(sample) >= 64 and bad * 10 > len(sample):
        raise InputError(
            f"{name}: looks like binary data ({bad} invalid UTF-8 sequences in its first {len(sample)} bytes), "
            f"not UTF-8 text; remove it from the source, or convert it to UTF-8"
        )


# ---------------------------------------------------------------- JSON lines
def read_jsonl(f, name: str, text_field: str, lang_field: str | None, batch_rows: int) -> Iterator[Batch]:
    """One JSON object per line; other fields are kept as the ``meta`` JSON string."""
    texts, langs, metas, records = [], [], [], []
    bad = Quarantine()
    for lineno, raw in enumerate(_lines(f, name), start=1):
        if bad.full:
            yield Batch([], [], [], [], bad.take())
        if raw is None:
            bad.add(*too_long(lineno))
            continue
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            reason = "invalid UTF-8" if _bad_utf8(raw) else f"malformed JSON ({e})"
            bad.add(lineno, f"line {lineno}: {reason}", excerpt(raw))
            continue
        if not isinstance(obj, dict):
            bad.add(lineno, f"line {lineno}: expected a JSON object, got {type(obj).__name__}", excerpt(raw))
            continue
        text = obj.pop(text_field, None)
        if not isinstance(text, str):
            what = "missing" if text is None else f"a {type(text).__name__}, not a string"
            bad.add(
                lineno,
                f"line {lineno}: field {text_field!r} is {what} (keys: {', '.join(sorted(obj))[:200]}); "
                f"set text_field to the field holding the text",
                excerpt(raw),
            )
            continue
        lang = obj.pop(lang_field, None) if lang_field else None
        texts.append(text)
        langs.append(lang if isinstance(lang, str) else None)
        metas.append(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode() if obj else None)
        records.append(lineno)
        if len(texts) >= batch_rows:
            yield Batch(texts, records, langs, metas, bad.take())
            texts, langs, metas, records = [], [], [], []
    if texts or bad.records:
        yield Batch(texts, records, langs, metas, bad.take())


def _bad_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# ---------------------------------------------------------------- Arrow tables (Parquet, datasets)
def read_arrow(
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    name: str,
    text_field: str,
    lang_field: str | None,
    start: int = 0,
) -> Generator[Batch, None, int]:
    """Columns straight from Arrow: the text column, the language column if any, the rest as JSON meta.

    Rows are numbered from ``start``; the generator returns the next free number, so the splits
    of a dataset read one after another are numbered on (``yield from`` gives it back) and no two
    records of an input share a number, hence a doc id."""
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
    offset = start
    for rb in batches:
        df = pl.from_arrow(rb)
        if not isinstance(df, pl.DataFrame):
            df = df.to_frame()
        records = np.arange(offset, offset + rb.num_rows, dtype=np.int64)
        offset += rb.num_rows
        rest = [c for c in df.columns if c not in (text_field, lang_field)]
        meta = df.select(pl.struct(rest).struct.json_encode()).to_series().to_arrow() if rest else None
        text = df.get_column(text_field)
        missing = text.is_null()
        bad = []
        if missing.any():
            rows = pl.Series(records).filter(missing).to_list()
            bad = [(r, f"row {r}: {text_field!r} is null", "") for r in rows]
        keep = ~missing
        yield Batch(
            text=text.filter(keep).to_arrow(),
            record=pl.Series(records).filter(keep).to_arrow(),
            lang=df.get_column(lang_field).cast(pl.String).filter(keep).to_arrow() if lang_field else None,
            meta=pl.Series(meta).filter(keep).to_arrow() if meta is not None else None,
            bad=bad,
        )
    return offset


def without_nul(batch: Batch, unit: str) -> Batch:
    """The batch less its records whose text holds a NUL byte, which join its quarantined ones.

    NUL is never in natural text: it marks binary or corrupt data (a file cut and glued, a
    mis-decoded UTF-16 field), so such a record is set aside with its reason rather than
    cleaned into a plausible-looking document. ``unit`` names a record: ``line`` or ``row``.
    One vectorised test per batch; nothing is copied when no text holds a NUL."""
    text = pl.Series("text", batch.text, dtype=pl.String)
    nul = text.str.contains("\x00", literal=True).fill_null(False)
    if not nul.any():
        return batch
    record = pl.Series("record", batch.record, dtype=pl.Int64)
    keep = ~nul
    bad = [
        (r, f"{unit} {r}: the text holds NUL bytes (binary or corrupt data); clean or remove the record", excerpt(t))
        for r, t in zip(record.filter(nul).to_list(), text.filter(nul).str.slice(0, 500).to_list())
    ]

    def kept(col):
        return None if col is None else pl.Series(col, dtype=pl.String).filter(keep).to_arrow()

    return Batch(
        text.filter(keep).to_arrow(),
        record.filter(keep).to_arrow(),
        kept(batch.lang),
        kept(batch.meta),
        batch.bad + bad,
    )


def parquet_batches(f, name: str, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    try:
        pf = pq.ParquetFile(f, pre_buffer=False)  # pre-buffered row groups would pile up (storage/parquet.py)
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
