"""Training batches from the shard stage: a temperature-sampled language mixture packed into fixed blocks.

Ranks split documents, not shards: the k-th document of a language (shards by path, rows in file
order) belongs to rank ``k % world_size``. A shard holds one language, so a shard split
(:func:`xlmflow.storage.shards.for_rank`) gives ranks different languages; a document split gives
every rank every language, the same mixture and disjoint documents, at the price of every rank
reading every shard and keeping ``1/world_size`` of its rows.

Each language is an endless token stream (shard order reshuffled per epoch) holding at most one
record batch. Each block is ``block_size`` tokens of ONE language drawn with q_i ∝ p_i^alpha; blocks
may start mid-document (nanoGPT), so no padding. ``labels`` equal ``input_ids`` (Hugging Face's GPT-2
shifts them itself) except ``<lang:xx>`` tags, which are inputs only: -100.

The checkpoint state is a step count: accelerate saves a registered object's ``state_dict`` on the
main process only and every rank loads it, so a per-rank cursor would give all ranks rank 0's. Step s
draws its languages from a generator seeded by (seed, rank, s); replaying k draws gives each stream's
token count, and the stream seeks to it through ``n_tokens``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xlmflow.storage import Location, read_batches, read_table
from xlmflow.storage.shards import Shard, list_shards, verify

IGNORE = -100  # label ignored by the loss (torch cross_entropy's ignore_index)
STATE_VERSION = 1


@dataclass(frozen=True)
class BlockSpec:
    """A batch is ``batch_size`` blocks of ``block_size`` tokens; languages are drawn with temperature ``alpha``."""

    block_size: int
    batch_size: int
    alpha: float = 0.3
    seed: int = 0


def mixture(tokens_per_lang: dict[str, int], alpha: float) -> dict[str, float]:
    """q_i ∝ (n_i / sum n)^alpha: alpha=1 keeps corpus shares, alpha=0 is uniform; between, small languages gain."""
    langs = sorted(tokens_per_lang)
    n = np.array([tokens_per_lang[lang] for lang in langs], dtype=np.float64)
    if not langs or (n <= 0).any():
        raise ValueError(f"every language needs train tokens to be mixed, got {tokens_per_lang}")
    w = (n / n.sum()) ** alpha
    return dict(zip(langs, (w / w.sum()).tolist()))


def _batches(shard: Shard, column: str, start_row: int, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, record batch) of one column from ``start_row`` on (storage skips the row groups before it)."""
    row = start_row
    for batch in read_batches(Location(shard.uri), [column], batch_rows, start=start_row):
        yield row, batch
        row += batch.num_rows


class _Stream:
    """One language's documents owned by this rank, as an endless token stream (epoch after epoch)."""

    def __init__(self, lang: str, shards: list[Shard], rank: int, world_size: int, seed: int, batch_rows: int):
        self.lang, self.shards, self.rank, self.world = lang, shards, rank, world_size
        self.seed, self.batch_rows = seed, batch_rows
        self.loaded: list[int] | None = None  # when a list: global indices of the documents read, in order
        self.bases = np.concatenate([[0], np.cumsum([s.rows for s in shards])[:-1]]).astype(np.int64)
        sums = [(int(n.sum()), int(n[rows].sum())) for n, rows in map(self._owned, range(len(shards)))]
        self.total, self.owned = sum(t for t, _ in sums), [o for _, o in sums]  # all ranks; this rank, per shard
        self.available = sum(self.owned)
        if not self.available:
            raise ValueError(
                f"language {lang!r} has {sum(s.rows for s in shards)} {shards[0].split} documents, too few for "
                f"{world_size} ranks (rank {rank} gets none): drop it (langs=...) or train on fewer ranks"
            )
        self.first_token = int(next(_batches(shards[0], "input_ids", 0, 1))[1].column(0)[0][0].as_py())
        self.seek(0)

    def _owned(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token counts of shard ``i``'s documents and the rows this rank owns; reads the ``n_tokens`` column only."""
        lengths = read_table(Location(self.shards[i].uri), ["n_tokens"]).column(0).to_numpy().astype(np.int64)
        return lengths, np.flatnonzero(self._mine(i, np.arange(len(lengths))))

    def _mine(self, i: int, rows: np.ndarray) -> np.ndarray:
        return (self.bases[i] + rows) % self.world == self.rank

    def _order(self, epoch: int) -> np.ndarray:
        """Shard order of an epoch: the same on every rank, so ranks walk a language in step."""
        return np.random.default_rng([self.seed, zlib.crc32(self.lang.encode()), epoch]).permutation(len(self.shards))

    def seek(self, consumed: int) -> None:
        """Put the cursor after ``consumed`` tokens of this rank's stream (epochs included)."""
        self.consumed = consumed
        self.epoch, rest = divmod(consumed, self.available)
        self.order, self.pos = self._order(self.epoch), 0
        while rest >= self.owned[self.order[self.pos]]:
            rest -= self.owned[self.order[self.pos]]
            self.pos += 1
        lengths, rows = self._owned(self.order[self.pos])
        ends = np.cumsum(lengths[rows])
        j = int(np.searchsorted(ends, rest, side="right"))
        self._open(int(rows[j]), rest - (int(ends[j - 1]) if j else 0))

    def _open(self, start_row: int, skip: int) -> None:
        self._it = _batches(self.shards[self.order[self.pos]], "input_ids", start_row, self.batch_rows)
        self._start, self._skip, self._buf, self._p = start_row, skip, np.empty(0, np.int64), 0

    def _load(self) -> None:
        """Fill the buffer with the next owned documents, moving on to the next shard and epoch as they run out."""
        while True:
            for first, batch in self._it:
                rows = first + np.arange(batch.num_rows)
                keep = np.flatnonzero(self._mine(self.order[self.pos], rows) & (rows >= self._start))
                if keep.size:
                    if self.loaded is not None:
                        self.loaded.extend((self.bases[self.order[self.pos]] + rows[keep]).tolist())
                    self._buf = np.asarray(pc.list_flatten(batch.column(0).take(pa.array(keep))))
                    self._p, self._skip = self._skip, 0
                    return
            self.epoch, self.pos = divmod(self.epoch * len(self.shards) + self.pos + 1, len(self.shards))
            self.order = self._order(self.epoch)
            self._open(0, 0)

    def take(self, n: int) -> np.ndarray:
        out, self.consumed = [], self.consumed + n
        while n:
            if self._p == len(self._buf):
                self._load()
            out.append(self._buf[self._p : self._p + n])
            self._p, n = self._p + len(out[-1]), n - len(out[-1])
        return np.concatenate(out)


class BlockLoader:
    """Batches ``{input_ids, labels, lang_ids}`` ([batch_size, block_size] int64) for one rank of a DDP job.

    ``lang_ids`` is 1 + the language's position in ``langs`` (0 is reserved for "no language").
    ``tag_ids`` maps a language to its ``<lang:xx>`` token id; a language missing from it takes
    the first token of its first document. Every shard is verified (size, sha256) before any read:
    one hash pass over the split's shards at start-up.
    """

    def __init__(
        self,
        shards_stage: Location | str,
        split: str,
        spec: BlockSpec,
        rank: int = 0,
        world_size: int = 1,
        langs: list[str] | None = None,
        tag_ids: dict[str, int] | None = None,
        batch_rows: int = 1024,
        record: bool = False,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.spec, self.split, self.rank, self.world_size = spec, split, rank, world_size
        shards = sorted(list_shards(shards_stage, split, langs), key=lambda s: s.path)
        by_lang = {lang: [s for s in shards if s.lang == lang] for lang in {s.lang for s in shards}}
        self.langs = sorted(by_lang if langs is None else langs)
        missing = [lang for lang in self.langs if lang not in by_lang]
        if missing or not self.langs:
            raise ValueError(f"{shards_stage}: no {split} shards for {missing or 'any language'}")
        for s in shards:
            verify(s)
        self._streams = {x: _Stream(x, by_lang[x], rank, world_size, spec.seed, batch_rows) for x in self.langs}
        self.tokens_total = {lang: st.total for lang, st in self._streams.items()}
        self.tokens_available = {lang: st.available for lang, st in self._streams.items()}
        self.probs = mixture(self.tokens_total, spec.alpha)
        self.tag_ids = {lang: (tag_ids or {}).get(lang, st.first_token) for lang, st in self._streams.items()}
        self._tags = np.array(sorted(set(self.tag_ids.values())), dtype=np.int64)
        self.step = 0
        for st in self._streams.values() if record else ():
            st.loaded = []

    def _choices(self, step: int) -> np.ndarray:
        """Language index of each block of ``step``: depends on (seed, rank, step) only, never on history."""
        rng = np.random.default_rng([self.spec.seed, self.rank, step])
        return rng.choice(len(self.langs), size=self.spec.batch_size, p=[self.probs[lang] for lang in self.langs])

    def next_batch(self) -> dict[str, np.ndarray]:
        t, choice = self.spec.block_size, self._choices(self.step)
        ids = np.stack([self._streams[self.langs[li]].take(t) for li in choice]).astype(np.int64)
        self.step += 1
        lang_ids = (choice[:, None] + 1).astype(np.int64).repeat(t, axis=1)
        return {"input_ids": ids, "labels": np.where(np.isin(ids, self._tags), IGNORE, ids), "lang_ids": lang_ids}

    def batches(self, max_steps: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches until ``step == max_steps``: every rank yields the same number, also after a resume."""
        while self.step < max_steps:
            yield self.next_batch()

    def documents_read(self) -> dict[str, list[int]]:
        """With ``record=True``: per language, the index (in the language's shard sequence) of every document read."""
        return {lang: list(st.loaded or []) for lang, st in self._streams.items()}

    @property
    def tokens_seen(self) -> dict[str, int]:
        return {lang: st.consumed for lang, st in self._streams.items()}

    def effective_epochs(self) -> dict[str, float]:
        """Tokens drawn on this rank / tokens this rank holds, per language (above 1.0: repeated data)."""
        return {lang: st.consumed / st.available for lang, st in self._streams.items()}

    def _config(self) -> dict:
        return {"split": self.split, "langs": self.langs, "world_size": self.world_size, **asdict(self.spec)}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "step": self.step, **self._config()}

    def load_state_dict(self, d: dict) -> None:
        """Restore from a state saved by any rank: replay the language draws, then seek each stream."""
        saved = {k: d.get(k) for k in self._config()}
        if d.get("version") != STATE_VERSION or saved != self._config():
            raise ValueError(f"loader state {saved} does not match this loader {self._config()}: keep them on resume")
        counts = np.zeros(len(self.langs), np.int64)
        for s in range(d["step"]):
            counts += np.bincount(self._choices(s), minlength=len(self.langs))
        for li, lang in enumerate(self.langs):
            self._streams[lang].seek(int(counts[li]) * self.spec.block_size)
        self.step = d["step"]


def valid_blocks(
    shards_stage: Location | str,
    lang: str,
    block_size: int,
    max_blocks: int,
    tag_ids: dict[str, int] | None = None,
    lang_id: int = 0,
) -> dict[str, np.ndarray]:
    """Up to ``max_blocks`` blocks of one language's valid split, the same on every rank, for a per-language loss.

    The split is read as the first epoch of a one-rank stream (seed 0). The last block is padded at
    its end (input 0, label -100), which under causal attention changes nothing before it, so a tiny
    language still gets a loss. Tags (``tag_ids`` values, else the language's first token) get -100.
    """
    shards = sorted(list_shards(shards_stage, "valid", [lang]), key=lambda s: s.path)
    if not shards:
        raise ValueError(f"{shards_stage}: no valid shards for language {lang!r}")
    for s in shards:
        verify(s)
    stream = _Stream(lang, shards, 0, 1, 0, 1024)
    tokens = stream.take(min(block_size * max_blocks, stream.available)).astype(np.int64)
    tags = list((tag_ids or {}).values()) or tokens[:1]
    pad = (0, -len(tokens) % block_size)
    ids = np.pad(tokens, pad).reshape(-1, block_size)
    labels = np.pad(np.where(np.isin(tokens, tags), IGNORE, tokens), pad, constant_values=IGNORE).reshape(ids.shape)
    return {"input_ids": ids, "labels": labels, "lang_ids": np.full(ids.shape, lang_id, np.int64)}
