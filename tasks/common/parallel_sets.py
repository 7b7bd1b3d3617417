"""Parallel sets: aligned segments in several languages, for held-out evaluation and alignment.

A set is a Parquet or TSV file with one column per ISO 639-1 language code and one aligned
segment per row (an ``id`` column and other non-language columns are ignored). A *folder*
holds named sets split in two: ``NAME.train.parquet`` (or ``.tsv``) may shape the vocabulary, give
translation pairs to training and fine-tuning, and train the transfer probe and the classifier;
``NAME.eval.parquet`` (or ``.tsv``) is held out: the langid stage
removes documents that repeat an eval segment or share an n-gram with one, so evaluation on
them stays unseen by everything trained downstream. A single *file* a user names is an eval set, unless it is
named ``NAME.train.parquet`` (or ``.tsv``): then it is a train part, a user's own translation pairs.
"""

from __future__ import annotations

import io
import posixpath
import re
from typing import Annotated

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp
from pydantic import BeforeValidator
from tokenizers import Tokenizer

from xlmflow.storage import Location, read_table
from xlmflow.tasks.common.tokens import presence

SPLITS = ("train", "eval")
PIVOT = "en"  # the language translation pairs and premiums are measured against
FORMATS = (".parquet", ".tsv")
ISO_639_1 = set(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el "
    "en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu "
    "ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na "
    "nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so "
    "sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh "
    "zu".split()
)

#: two-letter labels of lid.176 outside ISO 639-1 (Serbo-Croatian)
LID_EXTRA_2 = {"sh"}
LANG_CODE = re.compile(r"([a-z]{2,3})(_[A-Z][a-z]{3})?")


def check_lang_code(code: str) -> str | None:
    """Why ``code`` is not a language code a LID model could label, or None when it may be.

    Checked without loading a model (a config names the model too): an ISO 639-1 code (``en``; and
    ``sh``, which lid.176 uses), any three lowercase letters (ISO 639-3 labels lid.176 has for
    languages without a 639-1 code: ``als``, ``ceb``, ``yue``), each optionally with a GlotLID-style
    script (``eng_Latn``). ``english``, ``EN``, ``xx`` are refused: a label never equals them, so a
    threshold or kept language naming one would silently do nothing."""
    m = LANG_CODE.fullmatch(code) if isinstance(code, str) else None
    if m is None:
        return (
            f"{code!r} is not a language code; use the LID model's labels: ISO 639-1 (en, fr, zh), "
            f"three letters (ceb, yue), optionally with a script (eng_Latn)"
        )
    base = m.group(1)
    if len(base) == 2 and base not in ISO_639_1 | LID_EXTRA_2:
        return f"{code!r} is not an ISO 639-1 language code; use one such as en, fr, zh"
    return None


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


#: a list of set folders or files; a single path (TOML ``parallel = "dir"``) is a list of one
Paths = Annotated[list[str], BeforeValidator(_as_list)]


def set_name(loc: Location) -> str:
    """``debian-handbook`` for ``debian-handbook.eval.parquet`` (or ``.eval.tsv``), ``mine`` for ``mine.tsv``."""
    name = loc.name
    for split in SPLITS:
        for ext in FORMATS:
            name = name.removesuffix(f".{split}{ext}")
    return name.removesuffix(".parquet").removesuffix(".tsv")


def parallel_files(paths: str | list[str] | None, splits: tuple[str, ...] = SPLITS) -> list[tuple[str, Location]]:
    """(split, file) for every set of ``paths``: a folder's ``NAME.<split>.parquet`` (or ``.tsv``) files, sorted by
    name; a file named ``NAME.train.parquet`` (or ``.tsv``) is a train part (translation pairs for training and
    fine-tuning, never held out), any other file an eval set."""
    found = []
    for path in _as_list(paths):
        loc = Location.of(path)
        if loc.is_dir():
            for p in sorted(loc.fs.ls(loc.path, detail=False)):
                name = posixpath.basename(p.rstrip("/"))
                found += [
                    (split, loc.child(name)) for split in splits for ext in FORMATS if name.endswith(f".{split}{ext}")
                ]
        elif not loc.exists():
            raise ValueError(f"parallel set {path!r}: no such file or folder")
        else:  # a file named NAME.train.parquet (.tsv) is a train part; any other file an eval set
            split = "train" if loc.name.endswith(tuple(f".train{ext}" for ext in FORMATS)) else "eval"
            found += [(split, loc)] if split in splits else []
    return found


def read_set(loc: Location, min_rows: int = 1) -> pl.DataFrame:
    """A parallel set as a table of its language columns (strings) plus ``id`` when it has one.

    Errors name the file and what is wrong: not Parquet or TSV, unreadable or ragged rows, a
    2-3 letter column that is not an ISO 639-1 code, no language column, fewer than ``min_rows`` rows.
    """
    if not loc.exists():
        raise ValueError(f"parallel set {loc}: no such file")
    if not loc.name.endswith(FORMATS):
        raise ValueError(f"parallel set {loc}: not a Parquet or TSV file (name it .parquet or .tsv)")
    df = read_table_file(loc, f"parallel set {loc}")
    bad = [c for c in df.columns if re.fullmatch(r"[a-z]{2,3}", c.lower()) and c.lower() not in ISO_639_1 | {"id"}]
    if bad:
        raise ValueError(
            f"parallel set {loc}: column {bad[0]!r} is not an ISO 639-1 language code; name language "
            f"columns en, fr, de, ... (other columns are ignored)"
        )
    langs = languages(df)
    if not langs:
        raise ValueError(
            f"parallel set {loc}: no language column (columns: {', '.join(df.columns)}); name one column "
            f"per language by its ISO 639-1 code"
        )
    if df.height < min_rows:
        raise ValueError(
            f"parallel set {loc}: {df.height} row(s); evaluation needs at least {min_rows} aligned segments"
        )
    keep = (["id"] if "id" in df.columns else []) + langs
    return df.select(keep).with_columns(pl.col(langs).cast(pl.String))


def read_table_file(loc: Location, what: str) -> pl.DataFrame:
    """A Parquet file, or a TSV file (every field a string, no quoting), as a table; errors begin with ``what``."""
    try:
        if loc.name.endswith(".tsv"):
            with loc.open("rb") as f:
                data = f.read()
            ragged(data, what)
            return pl.read_csv(io.BytesIO(data), separator="\t", quote_char=None, infer_schema=False)
        return pl.from_arrow(read_table(loc))
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError, pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{what}: unreadable ({first}); check that every row has the same number of tab-separated fields as "
            f"the header"
        ) from None


def ragged(data: bytes, what: str) -> None:
    """Refuse a TSV whose rows do not all have the header's number of fields, naming the first such line.

    polars fills a short row's missing fields with nulls, which would silently misalign a set (a
    segment with no translation); one vectorised count of tabs per line finds it."""
    lines = pl.Series(data.decode("utf-8", errors="replace").split("\n")).str.strip_suffix("\r")
    tabs = lines.str.count_matches("\t", literal=True)
    used = lines.str.len_bytes() > 0  # blank lines (the last newline) hold no row
    wrong = (tabs != tabs[0]) & used
    if wrong.any():
        i = int(wrong.arg_max())
        raise ValueError(
            f"{what}: unreadable: line {i + 1} has {tabs[i] + 1} tab-separated fields, the header "
            f"has {tabs[0] + 1}; give every row one field per column (an empty field is still a field)"
        )


def languages(df: pl.DataFrame) -> list[str]:
    """The language columns: ISO 639-1 codes, except ``id``, which names the segment (not Indonesian)."""
    return [c for c in df.columns if c in ISO_639_1 and c != "id"]


def id_class(segment_id: str) -> str:
    """A segment's class, from its id: the LibreOffice help module (``text/<module>/...``), else the handbook
    chapter (``<chapter>.html#...``), else what comes before the first ``#``. The transfer probe and the
    classification fine-tune learn these classes from one language and are tested on the others."""
    if segment_id.startswith("text/") and segment_id.count("/") >= 2:
        return segment_id.split("/")[1]
    return re.split(r"\.html|#", segment_id, maxsplit=1)[0]


def labelled_rows(df: pl.DataFrame, lang: str, min_rows: int) -> pl.DataFrame:
    """``df``'s rows with a non-empty ``lang`` side, as ``text`` and ``class`` (:func:`id_class` of the id), of the
    classes with at least ``min_rows`` such rows (a rarer class cannot be learnt)."""
    if lang not in df.columns or "id" not in df.columns:
        return pl.DataFrame({"text": [], "class": []}, schema={"text": pl.String, "class": pl.String})
    rows = df.filter(pl.col(lang).is_not_null() & (pl.col(lang) != "")).select(
        pl.col(lang).alias("text"),
        pl.col("id").cast(pl.String).map_elements(id_class, return_dtype=pl.String).alias("class"),
    )
    counts = rows["class"].value_counts()
    return rows.filter(pl.col("class").is_in(sorted(counts.filter(pl.col("count") >= min_rows)["class"])))


def segments(files: list[Location]) -> pl.Series:
    """Every segment of every language column of ``files``, one string each (nulls dropped)."""
    cols = []
    for f in files:
        df = read_set(f)
        cols += [df[lang] for lang in languages(df)]
    return pl.concat(cols).drop_nulls().rename("segment") if cols else pl.Series("segment", [], pl.String)


class Parallel:
    """Parallel files as binary segment x token matrices, each language column encoded once.

    ``pair(a, b)`` stacks, over every file holding both, the rows where both sides are
    present and not copies of each other (untranslated segments would teach identity).
    """

    def __init__(self, tok: Tokenizer, files: list[Location]):
        self.tok = tok
        # ``id`` names the segment, not Indonesian: parallel files keep their key there
        self.tables = [read_set(loc).drop("id", strict=False) for loc in files]
        self._matrices: dict[tuple[int, str], sp.csr_matrix] = {}

    def _matrix(self, i: int, lang: str) -> sp.csr_matrix:
        if (i, lang) not in self._matrices:
            texts = self.tables[i][lang].fill_null("").str.normalize("NFC").to_list()
            self._matrices[(i, lang)] = presence(self.tok, texts)
        return self._matrices[(i, lang)]

    def rows(self, i: int, a: str, b: str) -> np.ndarray:
        t = self.tables[i]
        return (
            t.select(pl.col(a).is_not_null() & pl.col(b).is_not_null() & (pl.col(a) != pl.col(b)))
            .to_series()
            .fill_null(False)
            .to_numpy()
        )

    def pair(self, a: str, b: str) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
        ma, mb = [], []
        for i, t in enumerate(self.tables):
            if a in t.columns and b in t.columns:
                keep = self.rows(i, a, b)
                ma.append(self._matrix(i, a)[keep])
                mb.append(self._matrix(i, b)[keep])
        if not ma or sum(m.shape[0] for m in ma) == 0:
            return None, None
        return sp.vstack(ma).tocsr(), sp.vstack(mb).tocsr()

    def texts(self, a: str, b: str) -> tuple[list[str], list[str]]:
        out_a, out_b = [], []
        for i, t in enumerate(self.tables):
            if a in t.columns and b in t.columns:
                sel = t.filter(pl.Series(self.rows(i, a, b)))
                out_a += sel[a].str.normalize("NFC").to_list()
                out_b += sel[b].str.normalize("NFC").to_list()
        return out_a, out_b
