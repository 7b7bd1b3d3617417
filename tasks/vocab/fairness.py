"""How fairly the shared vocabulary serves each language, and how good the alignment is.

Measured on a hash-sampled set of clean documents per language (``report_docs``):
fertility (tokens per word; tokens per character for zh/ja/th and the other :data:`UNSPACED` scripts, whose
"words" are whole phrases, so a per-word figure means nothing there; ``fertility_unit`` says which), characters
per token,
share of words kept whole (a word preceded by a space encodes to one token), which ids
each language uses (vocabulary overlap, the languages of tokens) and the round trip
``decode(encode(x)) == NFC(x)``. On the parallel ``eval`` files (never trained on):
token and byte premium against en (Petrov et al. 2023: tokens of L over the same
segments / tokens of en) and the alignment precision (see :func:`alignment_precision`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from xlmflow.storage import FileEntry, Location, read_batches, stable_uniform
from xlmflow.tasks.common.parallel_sets import PIVOT, Parallel
from xlmflow.tasks.common.tokens import encode_ids, surfaces

UNSPACED = {"zh", "ja", "th", "lo", "km", "my"}
WORD = r"[\p{L}\p{M}\p{N}]+"
MIN_USE = 2  # a language "uses" an id seen this often in its sample
EXAMPLES = 5


@dataclass
class Usage:
    """Token counts per language (L x V) over the report sample, and per-language measurements."""

    langs: list[str]
    counts: np.ndarray
    stats: dict[str, dict] = field(default_factory=dict)

    def relative(self) -> np.ndarray:
        total = self.counts.sum(1, keepdims=True)
        return self.counts / np.maximum(total, 1)

    def dominant(self) -> list[str | None]:
        rel = self.relative()
        best = rel.argmax(0)
        used = self.counts.sum(0) > 0
        return [self.langs[b] if u else None for b, u in zip(best.tolist(), used.tolist())]

    def languages_using(self, token: int) -> int:
        return int((self.counts[:, token] >= MIN_USE).sum())


def language_usage(
    tok: Tokenizer, stage: Location, files: dict[str, list[FileEntry]], docs_per_lang: int, seed: int, batch_rows: int
) -> Usage:
    """Encode up to ``docs_per_lang`` hash-sampled documents per language and measure them."""

    langs = sorted(files)
    v = tok.get_vocab_size()
    counts = np.zeros((len(langs), v), dtype=np.int64)
    stats = {}
    for li, lang in enumerate(langs):
        n_docs = sum(f.rows or 0 for f in files[lang]) or 1
        keep_p = min(1.0, docs_per_lang / n_docs)
        s = {"docs": 0, "chars": 0, "bytes": 0, "tokens": 0, "words": 0, "letters": 0, "roundtrip_failures": 0}
        words: list[pl.DataFrame] = []
        for f in files[lang]:
            for batch in read_batches(stage.child(f.path), ["doc_id", "text"], batch_rows):
                chosen = stable_uniform(batch.column("doc_id"), seed + 1) < keep_p
                if not chosen.any():
                    continue
                texts = pl.from_arrow(batch.column("text").filter(pa.array(chosen))).str.normalize("NFC")
                ids, lengths = encode_ids(tok, texts.to_list())
                counts[li] += np.bincount(ids, minlength=v)
                offsets = np.concatenate([[0], np.cumsum(lengths)])
                decoded = tok.decode_batch(
                    [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])], skip_special_tokens=False
                )
                s["roundtrip_failures"] += int(
                    pc.sum(pc.invert(pc.equal(pa.array(decoded, pa.large_string()), texts.to_arrow()))).as_py() or 0
                )
                s["docs"] += len(texts)
                s["chars"] += int(texts.str.len_chars().sum())
                s["letters"] += int(texts.str.count_matches(r"\S").sum())  # characters but whitespace
                s["bytes"] += int(texts.str.len_bytes().sum())
                s["tokens"] += int(lengths.sum())
                found = texts.str.extract_all(WORD).explode().drop_nulls()
                s["words"] += len(found)
                words.append(found.value_counts(name="n").rename({found.name: "word"}))
        s["whole_word_share"] = whole_word_share(tok, words) if lang not in UNSPACED else None
        s["fertility"], s["fertility_unit"] = fertility(lang, s["tokens"], s["words"], s["letters"])
        s["chars_per_token"] = (s["chars"] / s["tokens"]) if s["tokens"] else None
        stats[lang] = s
    return Usage(langs, counts, stats)


def fertility(lang: str, tokens: int, words: int, letters: int) -> tuple[float | None, str]:
    """(fertility, its unit): tokens per word, or tokens per non-space character in an unspaced script (a "word"
    of zh/ja/th text is a run of characters up to punctuation, a phrase: tokens per such run is no measure)."""
    if lang in UNSPACED:
        return (tokens / letters if letters else None), "tokens per character"
    return (tokens / words if words else None), "tokens per word"


def whole_word_share(tok: Tokenizer, frames: list[pl.DataFrame]) -> float | None:
    """Share of running words (by count) that encode to one token when preceded by a space."""
    if not frames:
        return None
    df = pl.concat(frames).group_by("word").agg(pl.col("n").sum()).sort("word")
    _, lengths = encode_ids(tok, (" " + df["word"]).to_list())
    n = df["n"].to_numpy()
    return float(n[lengths == 1].sum() / n.sum())


# ---------------------------------------------------------------- parallel eval: premium, precision
def premiums(tok: Tokenizer, eval_files: list[Location], langs: list[str]) -> dict[str, dict]:
    """Per language: token and byte premium vs en over eval segments present, and translated, in both."""
    out = {}
    data = Parallel(tok, eval_files)
    for lang in langs:
        if lang == PIVOT:
            continue
        en, other = data.texts(PIVOT, lang)
        if not en:
            continue
        _, n_en = encode_ids(tok, en)
        _, n_l = encode_ids(tok, other)
        out[lang] = {
            "segments": len(en),
            "token_premium": round(float(n_l.sum() / n_en.sum()), 4),
            "byte_premium": round(sum(len(t.encode()) for t in other) / sum(len(t.encode()) for t in en), 4),
        }
    return out


def alignment_precision(tok: Tokenizer, table: pa.Table, eval_files: list[Location]) -> dict[str, dict]:
    """For each cross-language row (token t of language A anchored to a of language B, both in an eval file):

    over eval segment pairs (A, B) that are both present and not copies, ``hit_rate`` =
    (segments whose A side contains t and whose B side contains a) / (segments whose A
    side contains t), pooled over rows by evidence; ``chance_rate`` = the same pool's
    expected rate if a were independent of t (share of B sides containing a). ``lift`` =
    hit / chance. ``pairs_evaluated`` counts rows with t seen at least once.
    """
    data = Parallel(tok, eval_files)
    df = pl.from_arrow(table).filter(
        (pl.col("token_id") != pl.col("anchor_id"))
        & pl.col("lang").is_not_null()
        & pl.col("anchor_lang").is_not_null()
        & (pl.col("lang") != pl.col("anchor_lang"))
    )
    df = df.with_columns(pl.col("evidence").str.split("+").list.last().alias("kind"))
    pooled: dict[str, np.ndarray] = {}
    for (a, b), rows in sorted(df.group_by(["lang", "anchor_lang"]), key=lambda g: g[0]):
        m_a, m_b = data.pair(a, b)
        if m_a is None:
            continue
        m_a, m_b = m_a.tocsc(), m_b.tocsc()
        t, an = rows["token_id"].to_numpy(), rows["anchor_id"].to_numpy()
        ta, tb = m_a[:, t], m_b[:, an]
        seen = np.asarray(ta.sum(0)).ravel()
        hits = np.asarray(ta.multiply(tb).sum(0)).ravel()
        chance = np.asarray(tb.sum(0)).ravel() / m_a.shape[0]
        for kind in rows["kind"].unique().sort().to_list():
            k = (rows["kind"] == kind).to_numpy()
            acc = pooled.setdefault(kind, np.zeros(4))
            acc += [hits[k].sum(), seen[k].sum(), (seen[k] * chance[k]).sum(), (seen[k] > 0).sum()]
    return {
        kind: {
            "hit_rate": round(float(h / n), 4) if n else None,
            "chance_rate": round(float(c / n), 4) if n else None,
            "lift": round(float(h / c), 2) if c else None,
            "pairs_evaluated": int(p),
            "occurrences": int(n),
        }
        for kind, (h, n, c, p) in sorted(pooled.items())
    }


# ---------------------------------------------------------------- the report
def report(tok: Tokenizer, usage: Usage, table: pa.Table, edges, eval_files: list[Location]) -> dict:
    used = usage.counts >= MIN_USE
    overlap = {
        f"{usage.langs[i]}-{usage.langs[j]}": round(
            float((used[i] & used[j]).sum() / max((used[i] | used[j]).sum(), 1)), 4
        )
        for i, j in combinations(range(len(usage.langs)), 2)
    }
    df = pl.from_arrow(table)
    cross = df.filter(
        (pl.col("token_id") != pl.col("anchor_id"))
        & pl.col("lang").is_not_null()
        & pl.col("anchor_lang").is_not_null()
        & (pl.col("lang") != pl.col("anchor_lang"))
    )
    cross = cross.with_columns(
        pl.concat_str(
            [pl.min_horizontal("lang", "anchor_lang"), pl.max_horizontal("lang", "anchor_lang")], separator="-"
        ).alias("pair")
    )
    texts, _ = surfaces(tok)
    coverage = {p: n for p, n in cross.group_by("pair").len().sort("pair").rows()}
    examples = {}
    for (pair,), g in sorted(cross.group_by("pair"), key=lambda x: x[0]):
        learned = pl.col("evidence").str.contains("translation|dictionary")  # the informative ones first
        top = g.sort([learned, "score", "token_id"], descending=[True, True, False]).head(EXAMPLES)
        examples[pair] = [
            [texts[t], texts[a], e, round(float(s), 3)]
            for t, a, e, s in top.select("token_id", "anchor_id", "evidence", "score").rows()
        ]
    per_lang = {
        lang: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for lang, s in usage.stats.items()
    }
    for lang, prem in premiums(tok, eval_files, usage.langs).items():
        per_lang[lang].update(prem)
    return {
        "vocab_size": tok.get_vocab_size(),
        "languages": per_lang,
        "roundtrip": {
            "checked": sum(s["docs"] for s in usage.stats.values()),
            "failures": sum(s["roundtrip_failures"] for s in usage.stats.values()),
        },
        "vocabulary_overlap_jaccard": overlap,
        "shared_tokens": int((used.sum(0) >= 2).sum()),
        "alignment": {
            "evidence": {e: n for e, n in df.group_by("evidence").len().sort("evidence").rows()},
            "cross_language_pairs": cross.height,
            "cross_language_pairs_by_evidence": {
                e: n for e, n in cross.group_by("evidence").len().sort("evidence").rows()
            },
            "coverage": coverage,
            "learned_pairs": len(edges.source),
            "precision": alignment_precision(tok, table, eval_files),
            "examples": examples,
        },
    }


def markdown(report: dict) -> str:
    """The Prefect artifact: a per-language table and the alignment summary."""
    lines = [
        "# Vocabulary report",
        "",
        f"vocab size {report['vocab_size']}; round trip {report['roundtrip']['checked']} docs, "
        f"{report['roundtrip']['failures']} failures",
        "",
        "| lang | sampled chars | q | fertility (tokens/word; /char: unspaced script) | chars/token | whole words "
        "| token premium | byte premium |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lang, s in report["languages"].items():
        mix = report.get("sampling", {}).get(lang, {})
        whole = "n/a (unspaced script)" if s.get("whole_word_share") is None else s["whole_word_share"]
        premium = "pivot" if lang == PIVOT else "n/a (no parallel segments)"
        fert = s.get("fertility")
        if fert is not None and s.get("fertility_unit") == "tokens per character":
            fert = f"{fert} /char"
        lines.append(
            f"| {lang} | {mix.get('sampled_chars', '')} | {mix.get('q', '')} | {fert} | "
            f"{s.get('chars_per_token')} | {whole} | {s.get('token_premium', premium)} | "
            f"{s.get('byte_premium', premium)} |"
        )
    a = report["alignment"]
    lines += [
        "",
        f"## Alignment: {a['cross_language_pairs']} cross-language pairs",
        "",
        "| evidence | hit rate | chance | lift | pairs evaluated |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['hit_rate']} | {v['chance_rate']} | {v['lift']} | {v['pairs_evaluated']} |"
        for k, v in a["precision"].items()
    ]
    lines += ["", "| pair | rows | examples |", "|---|---|---|"]
    lines += [
        f"| {p} | {n} | {'; '.join(f'{x[0]!r}->{x[1]!r}' for x in a['examples'].get(p, [])[:3])} |"
        for p, n in a["coverage"].items()
    ]
    return "\n".join(lines)
