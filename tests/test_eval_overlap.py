"""Eval text held out by n-gram (langid's ``eval_overlap``) and contamination counted over the segments that can
hold an n-gram (evaluate's ``contamination``). Plain functions, no Prefect; a few seconds."""

import json
from pathlib import Path

import numpy as np
import polars as pl
from shard_fixtures import tiny_tokenizer
from test_langid import EN, FR, ZH, make_ingest, outcome, run_langid

from xlmflow.storage import RunDir
from xlmflow.tasks import langid
from xlmflow.tasks.common.ngrams import NgramIndex, flatten, text_units
from xlmflow.tasks.evaluate import contamination, report_md
from xlmflow.tasks.langid import LangidParams

#: (text, reason at n = 10, reason at n = 6) per claimed language; EN[0], FR[0], ZH[0] are eval segments
CASES = {
    "en": [
        # the whole segment inside a longer paragraph: no exact copy, but every n-gram of it is shared
        (f"Read this first. {EN[0]} Then reboot the machine twice.", "eval_overlap", "eval_overlap"),
        # a long stretch of it, with a full-width RAID (NFKC does not let it hide), then other text
        ("The kernel provides a block device file for every ＲＡＩＤ array you add.", "eval_overlap", "eval_overlap"),
        # only short common phrases of it: "configured on the machine" (7 units), "kernel provides a" (5)
        ("Nothing is configured on the machine until the kernel provides a driver for it.", None, "eval_overlap"),
        (EN[2], None, None),  # another text
        (EN[0], "eval_holdout", "eval_holdout"),  # an exact copy keeps its own reason
    ],
    "fr": [
        (f"Remarque : {FR[0].lower()} Voir aussi le chapitre suivant.", "eval_overlap", "eval_overlap"),
        (FR[2], None, None),
    ],
    "zh": [
        ("说明：" + ZH[0] + "请先备份。", "eval_overlap", "eval_overlap"),  # characters are the units
        ("每个用户都需要一个块设备文件来保存数据。", None, "eval_overlap"),  # shares 一个块设备文件 (7 characters)
        (ZH[2], None, None),
    ],
}


def held_sets(tmp_path: Path) -> Path:
    held = tmp_path / "parallel"
    held.mkdir()
    rows = {"id": ["a", "b"], "en": [EN[0], "Save it."], "fr": [FR[0], "Enregistrez-le."], "zh": [ZH[0], "保存。"]}
    pl.DataFrame(rows).write_parquet(held / "toy.eval.parquet")
    pl.DataFrame({"id": ["c"], "en": [EN[1]], "fr": [FR[1]], "zh": [ZH[1]]}).write_parquet(held / "toy.train.parquet")
    return held


def reasons(run_dir: str) -> dict[str, str | None]:
    return dict(outcome(run_dir).select("text", "reason").rows())


def expected(column: int) -> dict[str, str | None]:
    return {case[0]: case[column] for docs in CASES.values() for case in docs}


def test_documents_sharing_an_ngram_with_an_eval_segment_are_rejected_and_counted(tmp_path):
    """Containing a segment, or a long stretch of one, is ``eval_overlap``; sharing short phrases is not."""
    run_dir = str(tmp_path / "run")
    make_ingest(run_dir, tmp_path, {lang: [(t, lang) for t, *_ in docs] for lang, docs in CASES.items()})
    run_langid(run_dir, LangidParams(min_lang_docs=1, holdout=str(held_sets(tmp_path))))
    assert reasons(run_dir) == expected(1)
    stats = json.loads(Path(run_dir, "langid", "stats.json").read_text())
    want = {lang: sum(c[1] == "eval_overlap" for c in docs) for lang, docs in CASES.items()}
    assert stats["rejected"]["eval_overlap"] == want
    assert stats["rejected"]["eval_holdout"] == {"en": 1}


def test_a_changed_ngram_size_reruns_the_signals_and_the_decision_not_the_model(tmp_path):
    run_dir = str(tmp_path / "run")
    make_ingest(run_dir, tmp_path, {lang: [(t, lang) for t, *_ in docs] for lang, docs in CASES.items()})
    params = LangidParams(min_lang_docs=1, holdout=str(held_sets(tmp_path)))
    run_langid(run_dir, params)
    assert reasons(run_dir) == expected(1)
    scores = sorted(Path(run_dir, "langid", "scores").rglob("*.parquet"))
    signals = sorted(Path(run_dir, "langid", "signals").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in scores + signals}
    smaller = params.model_copy(update={"holdout_ngram": 6})
    old, new = langid.plan(RunDir.of(run_dir), params), langid.plan(RunDir.of(run_dir), smaller)
    assert [u.fingerprint for u in old[0]] == [u.fingerprint for u in new[0]]  # scores: same key
    assert all(a.fingerprint != b.fingerprint for a, b in zip(old[1] + old[2], new[1] + new[2]))  # signals, filter
    run_langid(run_dir, smaller)
    assert reasons(run_dir) == expected(2)
    assert all(p.stat().st_mtime_ns == before[p] for p in scores), "the model's scores must not be rewritten"
    assert all(p.stat().st_mtime_ns != before[p] for p in signals)


def test_text_units_stand_in_for_tokens_in_every_script():
    """Pieces of up to 2 capitals or 4 other letters, single marks, CJK characters; NFKC, then lower case."""
    texts = ["Configuration /etc/apt", "Ｃｏｎｆｉｇｕｒａｔｉｏｎ /ｅｔｃ/ａｐｔ", "内核 RAID", "ra id", None]
    flat, starts, counts = text_units(pl.Series(texts))
    assert counts.tolist() == [8, 8, 4, 2, 0] and starts.tolist() == [0, 8, 16, 20, 22]
    assert np.array_equal(flat[:8], flat[8:16])  # C|onfi|gura|tion|/|etc|/|apt, whatever the width
    assert np.array_equal(flat[18:20], flat[20:22])  # RA|ID is ra|id once lower-cased
    index = NgramIndex(3)
    index.add(flat[:8], np.array([0]))
    assert index.counts(*flatten([flat[10:16], flat[16:20]])).tolist() == [4, 0]


def test_contamination_counts_only_segments_long_enough_to_hold_an_ngram(monkeypatch):
    tok = tiny_tokenizer()
    n = 5
    train = "the cat sat on a mat and the dog ran far away from home"
    index = NgramIndex(n)
    index.add(*text_units(pl.Series([train]))[:2])
    monkeypatch.setattr(contamination, "train_ngrams", lambda *a: index)
    segments = [
        "the cat sat on a mat and a bird",  # shares "the cat sat on a ..."
        "le chat est sur le tapis et le chien",  # shares nothing
        "the cat",  # part of the train text, but too short to share an n-gram
        "",  # empty: not a segment at all
        None,
    ]
    lengths = text_units(pl.Series(segments[:3]))[2].tolist()
    assert lengths[0] >= n and lengths[1] >= n and lengths[2] < n  # the premise of the counts below
    got = contamination.count_contamination(tok, "unused", "unused", {"en": segments, "fr": [segments[1]]}, n)
    assert got["per_language"]["en"] == {"share": 0.5, "contaminated": 1, "eligible": 2, "too_short": 1}
    assert got["per_language"]["fr"] == {"share": 0.0, "contaminated": 0, "eligible": 1, "too_short": 0}
    assert (got["n"], got["contaminated"], got["eligible"], got["too_short"]) == (n, 1, 3, 1)
    assert got["share"] == 1 / 3
    none = contamination.count_contamination(tok, "unused", "unused", {"en": ["the cat"]}, n)
    assert none["share"] is None and none["too_short"] == 1  # nothing eligible: no share, not 0
    lines = "\n".join(report_md._contamination_section({"contamination": {"toy": got, "short": none}}))
    assert "- toy (5-grams): 33.3% (1/3), 1 too short; en 50.0% (1/2), fr 0.0% (0/1)" in lines
    assert "- short (5-grams): n/a (0/0), 1 too short" in lines
