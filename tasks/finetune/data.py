"""Fine-tuning examples: translation (the shard stage's tokenised translation pairs, as prompt and target) and
classification (labelled texts of one language, :class:`LabelledExamples`).

An example of direction ``a-b`` is one row of a pairs file (:mod:`xlmflow.tasks.shard.pairs`) whose two sides make
a usable pair (:func:`xlmflow.storage.shards.usable`: both in their language, not a copy)::

    <lang:a> source <|endoftext|> <lang:b> target <|endoftext|>
    \\---------- prompt: -100 ---------------/ \\- labels -/

The loss is on the target's tokens and its end-of-text only (so the model learns to stop); the prompt, the target's
tag and the padding are labelled -100. Batches are right-padded with the tokenizer's ``<pad>`` (never EOS: a masked
EOS would teach the model nothing about stopping). Examples longer than ``max_len`` are left out, not cut: a cut
target would teach the model to stop mid-sentence.

A batch is a pure function of (seed, step): ``batch_size`` examples drawn uniformly, so resuming needs only the step.
Numpy only: the fine-tuning process imports this before torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xlmflow.storage import Location, read_table
from xlmflow.storage.shards import Shard, usable, verify

IGNORE = -100


@dataclass(frozen=True)
class Direction:
    src: str
    tgt: str

    @classmethod
    def parse(cls, text: str) -> "Direction":
        src, sep, tgt = text.partition("-")
        if not sep or not src or not tgt or src == tgt:
            raise ValueError(f"translation direction {text!r}: write it as SRC-TGT, e.g. en-fr")
        return cls(src, tgt)

    def __str__(self) -> str:
        return f"{self.src}-{self.tgt}"


class TranslationExamples:
    """Every usable example of ``directions`` in the pair files, at most ``max_len`` tokens long, and their batches."""

    def __init__(self, files: list[Shard], directions: list[str], langs: list[str], pad_id: int, max_len: int):
        self.langs, self.pad_id, self.max_len = langs, pad_id, max_len
        self.sides: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}  # (file, lang) -> (flat ids, offsets)
        found, self.counts = [], {}
        for f, shard in enumerate(files):
            verify(shard)
            table = read_table(Location(shard.uri))
            for d in map(Direction.parse, directions):
                if d.src not in table.column_names or d.tgt not in table.column_names:
                    continue
                for lang in (d.src, d.tgt):
                    if (f, lang) not in self.sides:
                        column = table[lang].combine_chunks()
                        self.sides[f, lang] = (np.asarray(column.values), np.asarray(column.offsets))
                rows = np.flatnonzero(usable(table, d.src, d.tgt))
                length = self._lengths(f, d.src, rows) + self._lengths(f, d.tgt, rows)
                rows = rows[length <= max_len]
                self.counts[str(d)] = self.counts.get(str(d), 0) + len(rows)
                pair = [langs.index(d.src), langs.index(d.tgt)]
                found.append(np.column_stack([np.full_like(rows, f), rows, *(np.full_like(rows, x) for x in pair)]))
        self.examples = np.concatenate(found) if found else np.zeros((0, 4), np.int64)
        if not len(self.examples):
            raise ValueError(
                f"no usable translation pairs of at most {max_len} tokens for {', '.join(directions)} in "
                f"{[s.uri for s in files]}: give parallel sets with train parts in these languages (--parallel), "
                "or other directions (finetune.directions)"
            )

    def _lengths(self, f: int, lang: str, rows: np.ndarray) -> np.ndarray:
        offsets = self.sides[f, lang][1]
        return offsets[rows + 1] - offsets[rows]

    def _side(self, f: int, lang: str, row: int) -> np.ndarray:
        flat, offsets = self.sides[f, lang]
        return flat[offsets[row] : offsets[row + 1]]

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input ids, labels, language ids) of example ``i``."""
        f, row, a, b = (int(x) for x in self.examples[i])
        src, tgt = self._side(f, self.langs[a], row), self._side(f, self.langs[b], row)
        ids = np.concatenate([src, tgt]).astype(np.int64)
        labels = np.concatenate([np.full(len(src) + 1, IGNORE), tgt[1:]]).astype(np.int64)  # tag of tgt: input only
        lang_ids = np.concatenate([np.full(len(src), a + 1), np.full(len(tgt), b + 1)]).astype(np.int64)
        return ids, labels, lang_ids

    def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` examples drawn for ``step``, right-padded to the longest one (input_ids, labels, lang_ids)."""
        rng = np.random.default_rng([seed, step, 0xF1E])
        rows = [self.example(int(i)) for i in rng.integers(len(self.examples), size=batch_size)]
        width = max(len(r[0]) for r in rows)
        out = {
            "input_ids": np.full((batch_size, width), self.pad_id, np.int64),
            "labels": np.full((batch_size, width), IGNORE, np.int64),
            "lang_ids": np.zeros((batch_size, width), np.int64),
        }
        for j, (ids, labels, langs) in enumerate(rows):
            out["input_ids"][j, : len(ids)] = ids
            out["labels"][j, : len(ids)] = labels
            out["lang_ids"][j, : len(ids)] = langs
            out["lang_ids"][j, len(ids) :] = langs[-1]
        return out


class StepLoader:
    """The loader checkpoints see (:func:`xlmflow.tasks.train.checkpoints.load_checkpoint`): its state is the step."""

    def __init__(self, examples: TranslationExamples, seed: int, batch_size: int):
        self.examples, self.seed, self.batch_size, self.step = examples, seed, batch_size, 0

    def next_batch(self) -> dict[str, np.ndarray]:
        b = self.examples.batch(self.seed, self.step, self.batch_size)
        self.step += 1
        return b

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, d: dict) -> None:
        if (d.get("seed"), d.get("batch_size")) != (self.seed, self.batch_size):
            raise ValueError(f"loader state {d} does not match seed {self.seed}, batch size {self.batch_size}")
        self.step = int(d["step"])


class LabelledExamples:
    """Labelled texts of one language for classification: ``<lang:xx> text <|endoftext|>`` cut to ``max_len`` tokens
    (the tag kept), their class indices, and batches right-padded with ``<pad>`` (the classifier reads the last
    non-pad token), drawn uniformly, a pure function of (seed, step)."""

    def __init__(self, ids: list[np.ndarray], labels: np.ndarray, classes: list[str], lang_id: int, pad_id: int):
        if len(classes) < 2:
            raise ValueError(f"classification needs two classes or more, got {classes}")
        self.ids, self.labels, self.classes = ids, np.asarray(labels, np.int64), classes
        self.lang_id, self.pad_id = lang_id, pad_id
        self.counts = {c: int((self.labels == i).sum()) for i, c in enumerate(classes)}

    @classmethod
    def encode(cls, tok, texts: list[str], classes: list[str], lang: str, langs: list[str], max_len: int):
        """Tokenise ``texts`` (``classes`` is each text's class name) as the shard stage tokenises documents."""
        from xlmflow.tasks.common.specials import EOS, PAD, lang_tag

        tag, eos = tok.token_to_id(lang_tag(lang)), tok.token_to_id(EOS)
        body = [e.ids[: max_len - 2] for e in tok.encode_batch(texts, add_special_tokens=False)]
        names = sorted(set(classes))
        labels = np.array([names.index(c) for c in classes], np.int64)
        ids = [np.array([tag, *b, eos], np.int64) for b in body]
        return cls(ids, labels, names, langs.index(lang) + 1, tok.token_to_id(PAD))

    def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, step, 0xC1A])
        rows = rng.integers(len(self.ids), size=batch_size)
        width = max(len(self.ids[i]) for i in rows)
        input_ids = np.full((batch_size, width), self.pad_id, np.int64)
        for j, i in enumerate(rows):
            input_ids[j, : len(self.ids[i])] = self.ids[i]
        return {"input_ids": input_ids, "lang_ids": np.full_like(input_ids, self.lang_id), "labels": self.labels[rows]}
