"""Langid as plain functions: labels, thresholds, the zh/ja fix, mismatches, quality, dedup, bad input, parallel."""

import json
from collections import Counter

import numpy as np
import polars as pl
import pytest

from xlmflow import PACKAGE_ROOT
from xlmflow.storage import RunDir, load_output, partitions, read_table
from xlmflow.tasks import ingest, langid
from xlmflow.tasks.common.runtime import commit_stage
from xlmflow.tasks.langid import LangidParams, dedup, label_texts
from xlmflow.tasks.langid.dedup import DedupParams

EN = [
    "The kernel provides a block device file for every RAID volume that is configured on the machine.",
    "Administrators should keep backups of the configuration files before they upgrade the system.",
    "The package manager resolves dependencies and downloads the required archives from the mirrors.",
    "This chapter explains how the graphical desktop environment can be installed and configured.",
]
FR = [
    "Le noyau fournit un fichier de périphérique pour chaque volume RAID configuré sur la machine.",
    "Les administrateurs doivent conserver une copie des fichiers de configuration avant la mise à jour.",
    "Le gestionnaire de paquets résout les dépendances et télécharge les archives depuis les miroirs.",
    "Ce chapitre explique comment installer et configurer un environnement de bureau graphique.",
]
DE = [
    "Der Kernel stellt für jeden konfigurierten RAID-Verbund eine eigene Gerätedatei zur Verfügung.",
    "Administratoren sollten vor der Aktualisierung eine Sicherung der Konfigurationsdateien anlegen.",
    "Die Paketverwaltung löst Abhängigkeiten auf und lädt die benötigten Archive von den Spiegeln herunter.",
]
ZH = [
    "内核为机器上配置的每个阵列卷提供一个块设备文件。",
    "管理员在升级系统之前应该备份配置文件。",
    "软件包管理器会解析依赖关系并从镜像下载所需的归档文件。",
]


def write_jsonl(path, records):
    path.write_text(
        "".join(json.dumps({"text": t, "lang": lang}, ensure_ascii=False) + "\n" for t, lang in records),
        encoding="utf-8",
    )


def make_ingest(run_dir, tmp_path, files: dict[str, list[tuple[str, str | None]]]):
    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        write_jsonl(corpus / f"{name}.jsonl", records)
    run = RunDir.of(run_dir)
    params = ingest.IngestParams(sources=[ingest.Source(path=str(corpus), format="jsonl")])
    refs = [ingest.ingest_unit(u) for u in ingest.plan(run, params)]
    commit_stage(ingest.stage_for(run, params, refs), refs)


def run_langid(run_dir, params: LangidParams | None = None, incremental: bool = False):
    """Every unit of the stage without Prefect, in the flow's order; returns the stage manifest."""
    params = params or LangidParams(min_lang_docs=1)
    run = RunDir.of(run_dir)
    scores, signals, filters = langid.plan(run, params)
    score_refs = [langid.score_unit(u) for u in scores]
    signal_refs = [langid.signals_unit(u) for u in signals]
    filter_refs = [langid.filter_unit(u) for u in filters]
    earlier, new, ledger = langid.plan_dedup(run, params, filters, filter_refs, incremental)
    dedup_units = earlier + new
    dedup_refs = [langid.dedup_unit(u) for u in dedup_units]
    clean_refs = [langid.clean_unit(u) for u in langid.plan_clean(run, dedup_units, dedup_refs)]
    refs = score_refs + signal_refs + filter_refs + dedup_refs + clean_refs
    langid.commit_langid(langid.stage_for(run, params, refs), refs, ledger)
    return load_output(run.stage("langid"), "langid")


def outcome(run_dir) -> pl.DataFrame:
    """doc_id, text, lang and reason (null = clean) of every document, from the committed files."""
    stage = RunDir.of(run_dir).stage("langid")
    m = load_output(stage, "langid")
    frames = []
    for f in m.files:
        if f.path.startswith("clean/"):
            frames.append(
                pl.from_arrow(read_table(stage.child(f.path))).with_columns(pl.lit(None, pl.String).alias("reason"))
            )
        elif "rejected" in f.path:
            frames.append(pl.from_arrow(read_table(stage.child(f.path))).drop("dup_of"))
    return pl.concat(frames, how="diagonal_relaxed").select("doc_id", "text", "lang", "claimed_lang", "reason")


# ---------------------------------------------------------------- labels
def test_labels_thresholds_and_overrides():
    texts = EN[:1] + FR[:1] + DE[:1] + ["Hello there"]
    out = label_texts(texts, LangidParams(quality={"min_words": 1}))
    assert out["lang"].to_list()[:3] == ["en", "fr", "de"] and out["reason"].to_list()[:3] == [None] * 3
    strict = label_texts(texts, LangidParams(threshold=0.5, thresholds={"fr": 1.0}))
    assert strict["reason"].to_list()[1] == "lid_low_confidence" and strict["reason"].to_list()[0] is None
    kept = label_texts(texts[:3], LangidParams(keep_langs=["en", "de"]))
    assert kept["reason"].to_list() == [None, "lang_not_kept", None]


def test_zh_labelled_ja_without_kana_becomes_zh():
    texts = ["顯著改善安全性以保護新產生的商業機密。", "これは日本語の文章です。"]
    raw = label_texts(texts, LangidParams(fix_zh_ja=False, quality={"min_unspaced_chars": 1}))
    fixed = label_texts(texts, LangidParams(quality={"min_unspaced_chars": 1}))
    assert raw["lang"][0] == "ja", "the model's known confusion; if it no longer happens this test needs a new example"
    assert fixed["lang"].to_list() == ["zh", "ja"]


def test_claimed_vs_detected_relabel_or_drop():
    texts, claimed = [FR[0], EN[0], DE[0]], ["fr", "fr", "de-AT"]
    relabel = label_texts(texts, LangidParams(), claimed)
    assert relabel["lang"].to_list() == ["fr", "en", "de"] and relabel["reason"].to_list() == [None] * 3
    assert relabel["mismatched"].to_list() == [False, True, False]  # de-AT counts as de
    drop = label_texts(texts, LangidParams(mismatch="drop"), claimed)
    assert drop["reason"].to_list() == [None, "lang_mismatch", None]


def test_script_aware_quality_signals():
    from xlmflow.tasks.langid.quality import signals

    s = signals(
        pl.Series(
            ["这是一个简单的中文句子", "one two three four", "a\na\na\nb", "x y z x y z x y z x y z", "%%% ### ***"]
        )
    )
    assert s["unspaced"].to_list() == [True, False, False, False, False]
    assert s["n_words"].to_list() == [11, 4, 4, 12, 3]  # zh counts letters, not (space-separated) words
    assert s["mean_word_len"][0] is None and s["dup_line_frac"][2] == pytest.approx(0.5)
    assert s["rep_ngram_frac"][3] > 0.5 and s["rep_ngram_frac"][1] == 0
    assert s["symbol_ratio"][4] == pytest.approx(1.0) and s["alpha_ratio"][4] == 0


# ---------------------------------------------------------------- dedup
def test_minhash_finds_near_duplicates_and_keeps_smallest_id():
    base = "the quick brown fox jumps over the lazy dog near the river bank every single morning"
    texts = [
        base,
        base.replace("morning", "mornings"),
        "a completely different sentence about package management",
        base + " too",
    ]
    p = DedupParams()
    label = dedup.near_duplicates(dedup.minhash(texts, p), p)
    assert label.tolist() == [0, 0, 2, 0]
    assert np.array_equal(dedup.minhash(texts, p), dedup.minhash(texts, p))
    norm = pl.select(dedup.normalise(pl.lit(pl.Series(["Hello, World!", "hello   world", "other"])))).to_series()
    ex = dedup.exact_duplicates(pl.Series(["b", "a", "c"]), norm)
    assert ex.rows() == [("b", "a")]
    keys = dedup.text_keys(norm)  # the 128-bit keys the stage groups by find the same pair
    assert keys.dtypes == [pl.UInt64, pl.UInt64] and dedup.exact_duplicates(
        pl.Series(["b", "a", "c"]), keys
    ).rows() == [("b", "a")]


def test_bucketed_dedup_equals_the_in_memory_definition(tmp_path, monkeypatch):
    """Hash buckets on scratch, one at a time, give exactly the clusters of the definition (signatures and
    keys of the whole language in memory, in doc_id order), whatever the number of buckets and batches."""
    from xlmflow.tasks.langid import dedup_buckets

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, 40)) for _ in range(400)]
    texts += [t + " extra" for t in texts[:120]] + [t.upper() + "!" for t in texts[100:160]]  # near, exact
    ids = [f"d{i:04d}" for i in rng.permutation(len(texts))]
    norm = pl.select(dedup.normalise(pl.lit(pl.Series(texts)))).to_series()
    p = DedupParams()
    # the definition
    order = np.argsort(ids)
    doc_id, key = pl.Series(ids).gather(order), norm.gather(order)
    ex = dedup.exact_duplicates(doc_id, key)
    alive = ~doc_id.is_in(ex["doc_id"].implode())
    label = dedup.near_duplicates(dedup.minhash(key.filter(alive), p), p)
    kept = doc_id.filter(alive)
    near = np.flatnonzero(label != np.arange(len(label)))
    expected = sorted(ex.rows() + list(zip(kept.gather(near), kept.gather(label[near]))))
    assert len(ex) >= 60 and len(near) >= 100
    for buckets in (1, 7):
        monkeypatch.setattr(dedup_buckets, "BUCKET_DOCS", -(-len(texts) // buckets))
        batches = [(pl.Series(ids[k : k + 97]), norm[k : k + 97]) for k in range(0, len(texts), 97)]
        scratch = tmp_path / f"b{buckets}"
        scratch.mkdir()
        n, dropped, _ = dedup_buckets.find_duplicates(batches, p, str(scratch), len(texts))
        assert n == len(texts) and sorted(dropped.select("doc_id", "dup_of").rows()) == expected


# ---------------------------------------------------------------- the stage
def test_stage_partitions_stats_and_same_bytes(tmp_path):
    untranslated = EN[2]
    files = {
        "en": [(t, "en") for t in EN],
        "fr": [(t, "fr") for t in FR] + [(untranslated, "fr"), (FR[0].replace(" ", "  ") + " !", "fr")],
        "de": [(t, "de") for t in DE],
        "zh": [(t, "zh-CN") for t in ZH],
    }
    runs = []
    for name in ("a", "b"):
        make_ingest(str(tmp_path / name), tmp_path, files)
        m = run_langid(str(tmp_path / name))
        runs.append({f.path: f.sha256 for f in m.files})
    assert runs[0] == runs[1], "same input and config must give the same bytes"
    run_dir = str(tmp_path / "a")
    assert sorted(partitions(m, "clean")) == ["de", "en", "fr", "zh"]
    docs = outcome(run_dir)
    assert docs["doc_id"].is_unique().all() and docs.height == sum(map(len, files.values()))
    clean = docs.filter(pl.col("reason").is_null())
    assert sorted(clean.filter(pl.col("lang") == "fr")["text"]) == sorted(FR)  # the re-spaced copy is a duplicate
    assert clean.filter(pl.col("text") == untranslated).rows() == [
        (clean.filter(pl.col("text") == untranslated)["doc_id"][0], untranslated, "en", "en", None)
    ]
    stats = json.loads((tmp_path / "a" / "langid" / "stats.json").read_text())
    assert stats["mismatch"]["fr"]["en"] == 1
    assert stats["rejected"]["duplicate"] == {"en": 1, "fr": 1}
    assert stats["documents"]["clean"] == clean.height and stats["languages"] == ["de", "en", "fr", "zh"]


def test_bad_input_never_crashes_and_every_document_ends_somewhere(tmp_path):
    """Every document, however bad, ends in clean or rejected with the one reason the rules give it.

    Length is judged before LID, LID before the other quality rules, so each input is built to break exactly
    one rule at its place in that order (and LID-dependent ones sit far from the 0.5 threshold)."""
    huge = "lorem ipsum dolor sit amet " * 800_000  # ~21 MB on one line
    kernel, backups = EN[0], EN[1]
    cases = [
        ("", "en", "empty"),
        ("a" * 5_000_000, None, "too_short"),  # one word
        (huge, "en", "too_long"),  # 4M words
        ("@@@ ### $$$ %%% ^^^ &&& *** ~~~ ||| <<< >>> +++ === @@@ ### $$$", "en", "lid_low_confidence"),  # p ~ 0.23
        ("ꙮꙮꙮ ꙮꙮ ꙮꙮꙮꙮ ꙮ ꙮꙮ ꙮꙮꙮ", None, "lid_low_confidence"),  # a letter the model does not know, p ~ 0.12
        ("Hello world, Привет мир, 你好世界, مرحبا بالعالم and some more words here", "en", "lid_low_confidence"),
        ("zxqv pqrk vvtl mmnx gdrz kwpl", "xx", "lid_low_confidence"),  # p ~ 0.15
        # confidently English (p >= 0.8), each breaking one quality rule
        (kernel + " " + " ".join(c * 5 for c in "+=*#@$%^&~|<>"), "en", "symbol_ratio"),  # 0.45 > 0.3
        (kernel + " " + " ".join("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), "en", "mean_word_length"),
        (
            "Order 123456789012345 was shipped to the customer on 20240101 with tracking number "
            "98765432109876543 and invoice 5551234567890.",
            "en",
            "digit_ratio",  # 0.47 > 0.4
        ),
        (
            "In 1999, 2000, 2001... the values were 12, 34, 56... and 78, 90, 11... then 22, 33, 44... !!! ??? ... ...",
            "en",
            "alpha_ratio",  # letters 0.25 < 0.4, digits 0.34, no symbols
        ),
        ("\n".join([backups, backups, backups, kernel]), "en", "duplicate_lines"),  # 0.5 > 0.3
        (" ".join([kernel] * 4), "en", "repeated_ngrams"),  # one line, 0.74 > 0.3
        *[(t, "en", None) for t in EN],
    ]
    make_ingest(str(tmp_path / "r"), tmp_path, {"bad": [(t, claimed) for t, claimed, _ in cases]})
    run_langid(str(tmp_path / "r"))
    docs = outcome(str(tmp_path / "r"))
    assert docs.height == len(cases)  # JSONL keeps an empty text as a document: langid must judge it
    assert docs["doc_id"].is_unique().all()
    got = dict(docs.select("text", "reason").rows())
    assert [(t[:40], got[t]) for t, _, _ in cases] == [(t[:40], reason) for t, _, reason in cases]
    stats = json.loads((tmp_path / "r" / "langid" / "stats.json").read_text())
    expected = Counter(reason for _, _, reason in cases if reason)
    assert stats["rejected_by_reason"] == dict(sorted(expected.items()))
    assert stats["documents"]["rejected"] == sum(expected.values()) and stats["documents"]["clean"] == len(EN)


# ---------------------------------------------------------------- the bundled parallel sets
@pytest.mark.parametrize("name", ["debian-handbook", "libreoffice-help"])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_parallel_sets_labels_agree_with_column_language(name, split):
    """The stage's label agrees with the column's language for >= 95% of the segments it labels.

    Segments equal to the English column (untranslated text, code, names) cannot agree
    and are left out of the non-English columns; segments the stage rejects (too short,
    low confidence) get no label and are left out too. The coverage is checked as well,
    so a stage that labels almost nothing cannot pass.
    """
    df = pl.read_parquet(PACKAGE_ROOT / "data" / "parallel" / f"{name}.{split}.parquet")
    langs = [c for c in df.columns if c != "id"]
    agree = labelled = segments = 0
    report = {}
    for lang in langs:
        col = df[lang] if lang == "en" else df.filter(pl.col(lang) != pl.col("en"))[lang]
        out = label_texts(col)
        kept = out.filter(pl.col("reason").is_null())
        ok = int((kept["lang"] == lang).sum())
        report[lang] = (round(ok / max(kept.height, 1), 4), round(kept.height / max(len(col), 1), 3))
        agree, labelled, segments = agree + ok, labelled + kept.height, segments + len(col)
    print(name, split, "per column (agreement, coverage):", report, "pooled:", round(agree / labelled, 4))
    assert agree / labelled >= 0.95
    assert labelled / segments >= 0.5
    assert all(a >= 0.9 for a, _ in report.values())


def test_documents_repeating_a_held_out_eval_segment_are_rejected(tmp_path):
    """Evaluation stays unseen: a document whose whole text equals an eval segment once both are normalised as
    exact dedup normalises (case folded, punctuation and symbols dropped, white space collapsed) is rejected as
    ``eval_holdout``, before any other rule, and counted. Train segments and other texts are kept. The n-gram rule
    is off here (``holdout_ngram=0``): a fragment of a segment is kept; tests/test_eval_overlap.py tests that rule."""
    held = tmp_path / "parallel"
    held.mkdir()
    short = ("Save it.", "Enregistrez-le.")  # too short for the quality rules: the holdout still names it
    pl.DataFrame({"id": ["a", "b"], "en": [EN[0], short[0]], "fr": [FR[0], short[1]]}).write_parquet(
        held / "toy.eval.parquet"
    )
    pl.DataFrame({"id": ["c"], "en": [EN[1]], "fr": [FR[1]]}).write_parquet(held / "toy.train.parquet")
    fragment = "The kernel provides a block device file"  # 7 of the 17 words of the eval segment EN[0]
    cases = {
        "en": [
            (EN[0], "eval_holdout"),  # an exact copy
            (EN[0].upper() + "!!", "eval_holdout"),  # case and punctuation
            ("  " + EN[0].replace(" ", " \t\n ").replace("RAID", "«RAID»") + "  ", "eval_holdout"),  # space, «»
            ("SAVE IT!", "eval_holdout"),  # two words: too_short, were it not held out
            (EN[1], None),  # a train segment: not held out
            (EN[2], None),  # another text
            (fragment, None),  # part of a segment is not the segment
        ],
        "fr": [(FR[0], "eval_holdout"), (FR[1], None)],
    }
    run_dir = str(tmp_path / "run")
    make_ingest(run_dir, tmp_path, {lang: [(t, lang) for t, _ in docs] for lang, docs in cases.items()})
    run_langid(run_dir, LangidParams(min_lang_docs=1, holdout=str(held), holdout_ngram=0))
    got = dict(outcome(run_dir).select("text", "reason").rows())
    assert len(got) == sum(map(len, cases.values()))
    for lang, docs in cases.items():
        assert [(t, got[t]) for t, _ in docs] == docs, lang
    stats = json.loads((tmp_path / "run" / "langid" / "stats.json").read_text())
    assert stats["rejected"] == {"eval_holdout": {"en": 4, "fr": 1}}  # nothing else rejected, nothing dropped
    assert stats["documents"] == {"scored": 9, "clean": 4, "rejected": 5}
