"""The alignment table: every token id -> an anchor id, with the evidence and a score.

Training can tie or initialise aligned tokens together; decoding is untouched (ids
stay distinct in the tokenizer). Evidence, strongest first:

* ``identical``: the same surface form up to the word-initial space (``Ġfile`` / ``file``);
* ``normalised``: equal after casefolding and stripping accents (``Système`` / ``systeme``);
* ``transliterated``: equal after a Cyrillic/Greek/Arabic -> Latin table as well (4+ letters);
* ``translation``: mutual-best Dice pairs of word tokens co-occurring in aligned
  segments of the parallel ``train`` files (non-en token -> en token); ``dictionary``:
  pairs from a user TSV (src -> tgt, both single tokens);
* ``shared``: a token used by two or more languages is its own anchor, recorded;
  ``self``: no partner.

Tokens grouped by form form a cluster whose representative is its smallest id;
translation edges go from a non-en cluster to an en cluster only, so anchors never chain.

``anchor_id`` (the cluster's anchor, case and word start folded in) is what ``init`` copies rows from. ``tie``
shares one input row, so it takes ``tie_id``: only ties across languages (a translation or dictionary edge,
a transliteration), each token to the partner of the same shape (word start, case): ``fichier`` -> ``file``,
``ĠFichier`` -> ``ĠFile``, while ``The`` and ``the`` keep rows of their own (the model must see case and word
starts; :func:`tie_rows`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp
from tokenizers import Tokenizer

from xlmflow.storage import Location, write_table
from xlmflow.tasks.common.parallel_sets import PIVOT, Parallel
from xlmflow.tasks.common.runtime import logger
from xlmflow.tasks.common.tokens import is_cjk, surfaces
from xlmflow.tasks.vocab.fairness import Usage

EVIDENCE_SCORE = {"identical": 1.0, "normalised": 0.9, "transliterated": 0.7}
ALIGNMENT_SCHEMA = pa.schema(
    [
        ("token_id", pa.int32()),
        ("anchor_id", pa.int32()),
        ("evidence", pa.string()),
        ("score", pa.float32()),
        ("lang", pa.string()),
        ("anchor_lang", pa.string()),
        ("tie_id", pa.int32()),
    ]
)

_CYRILLIC = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґўђјљњћџ",
        "a b v g d e e zh z i j k l m n o p r s t u f h c ch sh shch  y  e yu ya i yi ye g u d j lj nj c dz".split(" "),
    )
)
_GREEK = dict(zip("αβγδεζηθικλμνξοπρσςτυφχψω", "a v g d e z i th i k l m n x o p r s s t y f ch ps o".split()))
_ARABIC = dict(
    zip(
        "ابتثجحخدذرزسشصضطظعغفقكلمنهويءآأإةى",
        "a b t th j h kh d dh r z s sh s d t z a gh f q k l m n h w y a a a i h a".split(),
    )
)
TRANSLIT = str.maketrans({**_CYRILLIC, **_GREEK, **_ARABIC})


def core(surface: str | None) -> str | None:
    """The word part of a token: without one leading space; None unless all letters."""
    if surface is None:
        return None
    c = surface[1:] if surface.startswith(" ") else surface
    return c if c.isalpha() else None


def fold(word: str) -> str:
    """Casefold and strip combining marks (accents, Arabic harakat)."""
    d = unicodedata.normalize("NFD", word.casefold())
    return unicodedata.normalize("NFC", "".join(ch for ch in d if not unicodedata.combining(ch)))


# ---------------------------------------------------------------- the table
@dataclass
class Edges:
    """Directed candidate pairs source -> target (token ids) with evidence, score and the languages they came from."""

    source: np.ndarray
    target: np.ndarray
    score: np.ndarray
    evidence: list[str]
    langs: list[tuple[str, str]]


def form_clusters(cores: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Representative id per token (smallest id of its form group) and how it matched the representative."""
    v = len(cores)
    df = pl.DataFrame({"id": np.arange(v, dtype=np.int64), "core": cores})
    df = df.filter(pl.col("core").is_not_null())
    folded = [fold(c) for c in df["core"].to_list()]  # one entry per vocabulary id, not per document
    translit = [f.translate(TRANSLIT) for f in folded]
    df = df.with_columns(pl.Series("folded", folded), pl.Series("translit", translit))
    df = df.with_columns(
        pl.when((pl.col("folded") == pl.col("translit")) | (pl.col("translit").str.len_chars() >= 4))
        .then(pl.col("translit"))
        .otherwise(pl.col("folded"))
        .alias("key")
    )
    df = df.with_columns(pl.col("id").min().over("key").alias("rep"))
    reps = df.select("id", "rep").join(
        df.select(pl.col("id").alias("rep"), pl.col("core").alias("rep_core"), pl.col("folded").alias("rep_folded")),
        on="rep",
    )
    reps = (
        reps.join(df.select("id", "core", "folded"), on="id")
        .with_columns(
            pl.when(pl.col("id") == pl.col("rep"))
            .then(pl.lit("self"))
            .when(pl.col("core") == pl.col("rep_core"))
            .then(pl.lit("identical"))
            .when(pl.col("folded") == pl.col("rep_folded"))
            .then(pl.lit("normalised"))
            .otherwise(pl.lit("transliterated"))
            .alias("how")
        )
        .sort("id")
    )
    rep = np.arange(v, dtype=np.int64)
    how = ["self"] * v
    ids = reps["id"].to_numpy()
    rep[ids] = reps["rep"].to_numpy()
    for i, h in zip(ids.tolist(), reps["how"].to_list()):
        how[i] = h
    return rep, how


def translation_edges(
    tok: Tokenizer, candidates: np.ndarray, train: Parallel, langs: list[str], min_df: int, min_dice: float
) -> Edges:
    """Mutual-best Dice pairs (x in language X -> e in en) over the aligned segments of every train file."""
    src, tgt, score, pair_langs = [], [], [], []
    for x in [lang for lang in langs if lang != PIVOT]:
        a_en, a_x = train.pair(PIVOT, x)
        if a_en is None:
            continue
        a_en, a_x = a_en[:, candidates], a_x[:, candidates]
        cand_ids = np.flatnonzero(candidates)
        co = (a_x.T @ a_en).tocoo()  # x-token by en-token co-occurrence counts
        df_x, df_en = np.asarray(a_x.sum(0)).ravel(), np.asarray(a_en.sum(0)).ravel()
        keep = (co.data >= min_df) & (co.row != co.col) & (df_x[co.row] >= min_df) & (df_en[co.col] >= min_df)
        r, c, n = co.row[keep], co.col[keep], co.data[keep].astype(np.float64)
        dice = 2 * n / (df_x[r] + df_en[c])
        ok = dice >= min_dice
        r, c, dice = r[ok], c[ok], dice[ok]
        if not len(r):
            continue
        d = sp.csr_matrix((dice, (r, c)), shape=co.shape)
        best_en = np.asarray(d.argmax(axis=1)).ravel()
        best_x = np.asarray(d.argmax(axis=0)).ravel()
        mutual = (best_en[r] == c) & (best_x[c] == r)
        src.append(cand_ids[r[mutual]])
        tgt.append(cand_ids[c[mutual]])
        score.append(dice[mutual])
        pair_langs += [(x, PIVOT)] * int(mutual.sum())
    if not src:
        return Edges(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), [], [])
    s = np.concatenate(src)
    return Edges(s, np.concatenate(tgt), np.concatenate(score), ["translation"] * len(s), pair_langs)


def dictionary_edges(tok: Tokenizer, loc: Location) -> Edges:
    """src<TAB>tgt lines whose words are single tokens (as words inside a sentence): src -> tgt."""
    with loc.open("rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    rows = [ln.split("\t") for ln in lines if ln.strip() and not ln.startswith("#")]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != 2]
    if bad:
        raise ValueError(f"{loc}: line {bad[0]} is not src<TAB>tgt; fix it or remove it")
    src = [tok.encode(" " + s.strip()).ids for s, _ in rows]
    tgt = [tok.encode(" " + t.strip()).ids for _, t in rows]
    pairs = [(s[0], t[0]) for s, t in zip(src, tgt) if len(s) == 1 and len(t) == 1 and s[0] != t[0]]
    split = [f"{a.strip()}/{b.strip()}" for (a, b), s, t in zip(rows, src, tgt) if len(s) != 1 or len(t) != 1]
    if split:  # said, never silently dropped: such a word has no single row to tie
        logger().warning(
            "%s: %d of %d dictionary pairs are not one token on each side in this vocabulary and tie nothing "
            "(first: %s)",
            loc,
            len(split),
            len(rows),
            ", ".join(split[:5]),
        )
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return Edges(arr[:, 0], arr[:, 1], np.ones(len(arr)), ["dictionary"] * len(arr), [("", "")] * len(arr))


def build_alignment(
    tok: Tokenizer, usage: Usage, train: list[Location], dictionary: Location | None, min_df: int, min_dice: float
) -> tuple[pa.Table, Edges]:
    """The table (one row per id) and the translation/dictionary edges it used."""
    v = tok.get_vocab_size()
    texts, _ = surfaces(tok)
    cores = [core(s) for s in texts]
    rep, how = form_clusters(cores)
    lang = usage.dominant()  # dominant language per id, None when unused
    candidates = np.array([c is not None and (len(c) >= 2 or is_cjk(c)) for c in cores])
    edges = translation_edges(tok, candidates, Parallel(tok, train), usage.langs, min_df, min_dice)
    if dictionary is not None:
        d = dictionary_edges(tok, dictionary)
        edges = Edges(
            np.concatenate([d.source, edges.source]),
            np.concatenate([d.target, edges.target]),
            np.concatenate([d.score, edges.score]),
            d.evidence + edges.evidence,
            d.langs + edges.langs,
        )
    # cluster-level edges: the best-scoring one per source cluster, into a cluster that has none of its own
    anchor = rep.copy()
    evidence = list(how)
    score = np.array([EVIDENCE_SCORE.get(h, 1.0) for h in how])
    cluster_lang = cluster_languages(rep, usage)
    order = np.lexsort((edges.target, -edges.score, rep[edges.source])) if len(edges.source) else np.zeros(0, np.int64)
    moved: dict[int, tuple[int, float, str]] = {}
    targets: set[int] = set()
    for k in order.tolist():  # one loop step per candidate pair (hundreds to thousands), not per document
        cs, ct = int(rep[edges.source[k]]), int(rep[edges.target[k]])
        if cs == ct or cs in moved or cs in targets or ct in moved:
            continue
        if edges.evidence[k] == "translation" and (cluster_lang.get(cs) == PIVOT or cluster_lang.get(ct) != PIVOT):
            continue
        moved[cs] = (ct, float(edges.score[k]), edges.evidence[k])
        targets.add(ct)
    for t in range(v):
        hop = moved.get(int(rep[t]))
        if hop is not None:
            anchor[t] = hop[0]
            score[t] = score[t] * hop[1]
            evidence[t] = hop[2] if how[t] in ("self", "identical") else f"{how[t]}+{hop[2]}"
        elif anchor[t] == t and usage.languages_using(t) >= 2:
            evidence[t] = "shared"
            score[t] = usage.languages_using(t) / len(usage.langs)
    tie = tie_rows(texts, rep, how, {cs: hop[0] for cs, hop in moved.items()})
    table = pa.table(
        {
            "token_id": pa.array(np.arange(v), pa.int32()),
            "anchor_id": pa.array(anchor, pa.int32()),
            "evidence": evidence,
            "score": pa.array(np.round(score, 4), pa.float32()),
            "lang": lang,
            "anchor_lang": [lang[a] for a in anchor.tolist()],
            "tie_id": pa.array(tie, pa.int32()),
        },
        schema=ALIGNMENT_SCHEMA,
    )
    return table, edges


def shape(surface: str) -> tuple[bool, str]:
    """What tie mode keeps apart within a language: word start (a leading space) and case."""
    c = surface[1:] if surface.startswith(" ") else surface
    return surface.startswith(" "), "upper" if len(c) > 1 and c.isupper() else "title" if c[:1].isupper() else "lower"


def tie_rows(texts: list[str | None], rep: np.ndarray, how: list[str], hops: dict[int, int]) -> np.ndarray:
    """Tie mode's input row per id: across languages only. A token of a cluster moved by a translation or
    dictionary edge (``hops``: source cluster -> target cluster) reads the target cluster's token of its own shape;
    a transliterated token reads its cluster's token of its shape in the representative's script. Any other
    token, and one whose partner has no token of its shape, reads its own row. One loop step per clustered id
    (a vocabulary's, never a corpus's)."""
    tie = np.arange(len(rep), dtype=np.int64)
    by_shape: dict[tuple[int, tuple[bool, str]], int] = {}  # (cluster, shape) -> smallest id of the rep's script
    for t, r in enumerate(rep.tolist()):  # ids ascending: the first of a key is its smallest
        if texts[t] is not None and how[t] != "transliterated":
            by_shape.setdefault((r, shape(texts[t])), t)
    for t, r in enumerate(rep.tolist()):
        if texts[t] is None:
            continue
        if r in hops:
            tie[t] = by_shape.get((hops[r], shape(texts[t])), t)
        elif how[t] == "transliterated":
            tie[t] = by_shape.get((r, shape(texts[t])), t)
    return tie[tie]  # a target that is itself transliterated reads its own partner: no chains


def cluster_languages(rep: np.ndarray, usage: Usage) -> dict[int, str]:
    """Dominant language of each form cluster (relative frequencies summed over its members)."""
    rel = usage.relative()  # L x V
    summed = np.zeros_like(rel)
    np.add.at(summed.T, rep, rel.T)
    used = summed.sum(0) > 0
    best = summed.argmax(0)
    return {int(c): usage.langs[int(best[c])] for c in np.flatnonzero(used)}


def write(loc: Location, table: pa.Table) -> None:
    write_table(loc, table)
