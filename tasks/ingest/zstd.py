"""Reading .zst input so that a truncated file is an error, not a shorter file."""

from __future__ import annotations


class ZstdReader:
    """A .zst stream decompressed frame by frame, that raises EOFError when the input ends inside a frame.

    fsspec's zstandard reader ends quietly there, so a truncated file would pass as a shorter one
    (its last line quarantined, the rest silently lost). Input is fed in small chunks, so memory is
    bounded by what one chunk expands to."""

    CHUNK = 1 << 16

    def __init__(self, raw, name: str):
        import zstandard

        self.raw, self.name, self.dctx, self.error = raw, name, zstandard.ZstdDecompressor(), zstandard.ZstdError
        self.obj, self.buf, self.pending, self.done = self.dctx.decompressobj(), bytearray(), False, False

    def read(self, n: int = -1) -> bytes:
        while not self.done and (n < 0 or len(self.buf) < n):
            chunk = self.raw.read(self.CHUNK)
            if not chunk:
                if self.pending:
                    raise EOFError("the zstd stream ends inside a frame: the file is truncated")
                self.done = True
            while chunk:
                try:
                    self.buf += self.obj.decompress(chunk)
                except self.error as e:
                    raise OSError(f"corrupt zstd data: {e}") from e
                chunk, self.pending = b"", not self.obj.eof
                if self.obj.eof:  # a frame ended: what follows starts the next one
                    chunk, self.obj = self.obj.unused_data, self.dctx.decompressobj()
        n = len(self.buf) if n < 0 else min(n, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out
