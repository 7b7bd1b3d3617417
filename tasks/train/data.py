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

Translation pairs (the shard stage's ``pairs/`` files, :mod:`xlmflow.tasks.shard.pairs`) make a block kind of their
own: with probability ``pair_share(step)`` a block is packed from examples ``<lang:a> src <|endoftext|> <lang:b> tgt
<|endoftext|>``, a row and an ordered language pair drawn uniformly from the usable ones this rank owns (row %
world_size == rank), cut at ``block_size``; ``lang_ids`` follow each token's side. A pair block is a pure function of
(seed, rank, step, block): it needs no cursor, and with a share of 0 nothing is drawn, so the batches are those of a
run without pairs.

The checkpoint state is a step count: accelerate saves a registered object's ``state_dict`` on the
main process only and every rank loads it, so a per-rank cursor would give all ranks rank 0's. Step s
draws its languages from a generator seeded by (seed, rank, s); replaying k draws gives each stream's
token count, and the stream seeks to it through ``n_tokens``.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xlmflow.storage import Location, read_batches, read_table
from xlmflow.storage.shards import Shard, list_pairs, list_shards, usable, verify

IGNORE = -100  # label ignored by the loss (torch cross_entropy's ignore_index)
STATE_VERSION = 1


@dataclass(frozen=True)
class BlockSpec:
    """A batch is ``batch_size`` blocks of ``block_size`` tokens; languages are drawn with temperature ``alpha``."""

    block_size: int
    batch_size: int
    alpha: float = 0.3
    seed: int = 0
    pair_share: float = 0.0  # share of blocks packed from translation pairs
    pair_schedule: str = "constant"  # or "late": the share rises linearly to twice ``pair_share`` at ``max_steps``
    max_steps: int = 0  # the run's length, for the late schedule

    def pair_probability(self, step: int) -> float:
        """The chance that a block of ``step`` is a pair block: the share, or under ``late`` a linear rise from 0 to
        twice the share at the last step (the same pair blocks in all, more of them late), at most 1."""
        if self.pair_schedule == "constant" or not self.pair_share:
            return self.pair_share
        return min(1.0, 2.0 * self.pair_share * (step + 0.5) / max(self.max_steps, 1))


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


class _Pairs:
    """This rank's translation-pair examples: every usable (row, a, b) of the pair files, both directions, of rows
    ``row % world_size == rank`` (rows numbered through the files in path order), and their token ids."""

    def __init__(self, files: list[Shard], langs: list[str], rank: int, world_size: int, seed: int):
        self.seed, self.rank, self.langs = seed, rank, langs
        self.ids: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}  # (file, lang) -> (flat ids, offsets)
        found, base = [], 0
        for f, shard in enumerate(files):
            verify(shard)
            table = read_table(Location(shard.uri))
            here = [lang for lang in langs if lang in table.column_names]
            mine = (base + np.arange(table.num_rows)) % world_size == rank
            for lang in here:
                column = table[lang].combine_chunks()
                self.ids[f, lang] = (np.asarray(column.values), np.asarray(column.offsets))
            for a, b in itertools.permutations(here, 2):
                rows = np.flatnonzero(mine & usable(table, a, b))
                found.append(
                    np.column_stack(
                        [np.full_like(rows, f), rows] + [np.full_like(rows, langs.index(x)) for x in (a, b)]
                    )
                )
            base += table.num_rows
        self.examples = np.concatenate(found) if found else np.zeros((0, 4), np.int64)
        if not len(self.examples):
            raise ValueError(
                f"no usable translation pairs for rank {rank} of {world_size} in {[s.uri for s in files]} among "
                f"languages {langs}: set train.parallel_share = 0, or give parallel sets with train parts"
            )

    def _side(self, f: int, row: int, li: int) -> np.ndarray:
        flat, offsets = self.ids[f, self.langs[li]]
        return flat[offsets[row] : offsets[row + 1]]

    def block(self, step: int, j: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, language index + 1 per token) of pair block ``j`` of ``step``: examples drawn until the block
        is full, the last one cut."""
        rng = np.random.default_rng([self.seed, self.rank, step, j, 0x9A1])
        ids, langs, n = [], [], 0
        while n < size:
            f, row, a, b = self.examples[rng.integers(len(self.examples))]
            for li in (a, b):
                side = self._side(int(f), int(row), int(li))
                ids.append(side)
                langs.append(np.full(len(side), li + 1))
                n += len(side)
        return np.concatenate(ids)[:size], np.concatenate(langs)[:size]


class BlockLoader:
    """Batches ``{input_ids, labels, lang_ids}`` ([batch_size, block_size] int64) for one rank of a DDP job.

    ``lang_ids`` is 1 + the language's position in ``langs`` (0 is reserved for "no language").
    ``tag_ids`` maps a language to its ``<lang:xx>`` token id; a language missing from it takes
    the first token of its first document. Every shard is verified (size, sha256) before any read:
    one hash pass over the split's shards at start-up.

    Continued training (an incremental run) names the ``fresh`` shards (the new increments'): blocks are drawn
    from them with the mixture of their tokens, and a ``replay`` share of blocks from the earlier shards with the
    mixture of theirs (Ibrahim et al. 2024: replaying some old data keeps what the model learnt from it).
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
        fresh: list[str] | None = None,
        replay: float = 0.0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.spec, self.split, self.rank, self.world_size = spec, split, rank, world_size
        self.fresh, self.replay = (None if fresh is None else sorted(fresh)), (replay if fresh is not None else 0.0)
        shards = sorted(list_shards(shards_stage, split, langs), key=lambda s: s.path)
        by_lang = {lang: [s for s in shards if s.lang == lang] for lang in {s.lang for s in shards}}
        self.langs = sorted(by_lang if langs is None else langs)
        missing = [lang for lang in self.langs if lang not in by_lang]
        if missing or not self.langs:
            raise ValueError(f"{shards_stage}: no {split} shards for {missing or 'any language'}")
        for s in shards:
            verify(s)
        # the sources blocks are drawn from: (name, language, stream); all shards of a language, or with ``fresh``
        # its new shards (named by the language) then its earlier ones (``<lang>:replay``)
        self._sources: list[tuple[str, str, _Stream]] = []
        groups = [(lang, by_lang[lang]) for lang in self.langs]
        if self.fresh is not None:
            new = set(self.fresh)
            groups = [(lang, [s for s in by_lang[lang] if s.path in new]) for lang in self.langs]
            groups += [(f"{lang}:replay", [s for s in by_lang[lang] if s.path not in new]) for lang in self.langs]
            if not any(g for _, g in groups[: len(self.langs)]):
                raise ValueError(f"{shards_stage}: none of the new shards {self.fresh[:3]}... is a {split} shard")
        for name, group in groups:
            if group:
                stream = _Stream(name.split(":")[0], group, rank, world_size, spec.seed, batch_rows)
                self._sources.append((name, name.split(":")[0], stream))
        self._new = [i for i, (name, _, _) in enumerate(self._sources) if ":" not in name]
        self._old = [i for i, (name, _, _) in enumerate(self._sources) if ":" in name]
        self.tokens_total = {name: st.total for name, _, st in self._sources}
        self.tokens_available = {name: st.available for name, _, st in self._sources}
        self.probs = mixture({self._sources[i][0]: self._sources[i][2].total for i in self._new}, spec.alpha)
        if self._old:
            self.probs |= mixture({self._sources[i][0]: self._sources[i][2].total for i in self._old}, spec.alpha)
        first = {lang: st.first_token for _, lang, st in reversed(self._sources)}
        self.tag_ids = {lang: (tag_ids or {}).get(lang, first[lang]) for lang in self.langs}
        self._tags = np.array(sorted(set(self.tag_ids.values())), dtype=np.int64)
        self._pairs = None
        if spec.pair_share:
            files = list_pairs(shards_stage)
            self._pairs = _Pairs(files, self.langs, rank, world_size, spec.seed)
        self.step = 0
        for _, _, st in self._sources if record else ():
            st.loaded = []

    def _choices(self, step: int) -> np.ndarray:
        """Source index of each block of ``step``, or -1 for a pair block: depends on (seed, rank, step) only,
        never on history. The replay and pair draws have generators of their own, so a share of 0 changes
        nothing."""
        rng = np.random.default_rng([self.spec.seed, self.rank, step])
        new = np.array(self._new)
        p = [self.probs[self._sources[i][0]] for i in self._new]
        choice = new[rng.choice(len(new), size=self.spec.batch_size, p=p)]
        if self.replay and self._old:
            old = np.array(self._old)
            g = np.random.default_rng([self.spec.seed, self.rank, step, 2])
            back = g.random(self.spec.batch_size) < self.replay
            draw = old[g.choice(len(old), size=self.spec.batch_size, p=[self.probs[self._sources[i][0]] for i in old])]
            choice = np.where(back, draw, choice)
        if self._pairs is not None:
            pair = np.random.default_rng([self.spec.seed, self.rank, step, 1]).random(self.spec.batch_size)
            choice[pair < self.spec.pair_probability(step)] = -1
        return choice

    def next_batch(self) -> dict[str, np.ndarray]:
        t, choice = self.spec.block_size, self._choices(self.step)
        blocks = []
        for j, si in enumerate(choice):
            if si < 0:
                blocks.append(self._pairs.block(self.step, j, t))
            else:
                _, lang, stream = self._sources[si]
                blocks.append((stream.take(t), np.full(t, self.langs.index(lang) + 1)))
        self.step += 1
        ids = np.stack([b[0] for b in blocks]).astype(np.int64)
        lang_ids = np.stack([b[1] for b in blocks]).astype(np.int64)
        return {"input_ids": ids, "labels": np.where(np.isin(ids, self._tags), IGNORE, ids), "lang_ids": lang_ids}

    def batches(self, max_steps: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches until ``step == max_steps``: every rank yields the same number, also after a resume."""
        while self.step < max_steps:
            yield self.next_batch()

    def documents_read(self) -> dict[str, list[int]]:
        """With ``record=True``: per source (language), the index (in its shard sequence) of every document read."""
        return {name: list(st.loaded or []) for name, _, st in self._sources}

    @property
    def tokens_seen(self) -> dict[str, int]:
        return {name: st.consumed for name, _, st in self._sources}

    def effective_epochs(self) -> dict[str, float]:
        """Tokens drawn on this rank / tokens this rank holds, per source (above 1.0: repeated data)."""
        return {name: st.consumed / st.available for name, _, st in self._sources}

    def _config(self) -> dict:
        extra = {} if self.fresh is None else {"fresh": self.fresh, "replay": self.replay}
        return {"split": self.split, "langs": self.langs, "world_size": self.world_size, **asdict(self.spec), **extra}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "step": self.step, **self._config()}

    def load_state_dict(self, d: dict) -> None:
        """Restore from a state saved by any rank: replay the source draws, then seek each stream."""
        saved = {k: d.get(k) for k in self._config()}
        if d.get("version") != STATE_VERSION or saved != self._config():
            raise ValueError(f"loader state {saved} does not match this loader {self._config()}: keep them on resume")
        counts = np.zeros(len(self._sources), np.int64)
        for s in range(d["step"]):
            choice = self._choices(s)
            counts += np.bincount(choice[choice >= 0], minlength=len(self._sources))
        for si, (_, _, stream) in enumerate(self._sources):
            stream.seek(int(counts[si]) * self.spec.block_size)
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
