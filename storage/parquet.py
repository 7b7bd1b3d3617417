"""Parquet in and out: zstd, bounded row groups, streamed in record batches.

Writers roll over to a new part when one grows past ``max_bytes`` (uncompressed
Arrow size), so a single huge input never makes a huge file, and readers yield
record batches, so memory stays bounded by the batch, not the file.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import Location

COMPRESSION = "zstd"
ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 64 << 20  # a row group is flushed at whichever bound comes first
BATCH_ROWS = 16 * 1024


def write_table(loc: Location, table: pa.Table, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    with loc.open("wb") as f:
        pq.write_table(table, f, compression=COMPRESSION, row_group_size=row_group_rows)


def read_table(loc: Location, columns: list[str] | None = None) -> pa.Table:
    with loc.open("rb") as f:
        return pq.read_table(f, columns=columns)


def read_batches(loc: Location, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    with loc.open("rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


class PartWriter:
    """Writes batches into ``part-00000.parquet``, ``part-00001.parquet``, ... of at most ~``max_bytes`` each.

    ``place(name)`` returns where a part goes (an :class:`~storage.commit.Aside` path),
    so parts are committed atomically with the rest of a unit's output.
    """

    def __init__(self, place: Callable[[str], Location], schema: pa.Schema, max_bytes: int = 256 << 20,
                 prefix: str = "part", row_group_rows: int = ROW_GROUP_ROWS):
        self.place, self.schema, self.max_bytes, self.prefix = place, schema, max_bytes, prefix
        self.row_group_rows = row_group_rows
        self.names: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._file = None
        self._bytes = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self._pending.append(table.cast(self.schema) if table.schema != self.schema else table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        self._bytes += table.nbytes
        if self._pending_rows >= self.row_group_rows or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()
        if self._bytes >= self.max_bytes:
            self._close_part()

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.names):05d}.parquet"
        self.names.append(name)
        self._file = self.place(name).open("wb")
        self._writer = pq.ParquetWriter(self._file, self.schema, compression=COMPRESSION)
        self._bytes = 0

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self.row_group_rows)
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def _close_part(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._file.close()
            self._writer = self._file = None

    def close(self) -> list[str]:
        """Finish the last part; returns the part names (one empty part if nothing was written)."""
        if not self.names:
            self._open()
        self._close_part()
        return self.names
