"""The vocab stage as plain functions: sampling, tokenizer, alignment table, report, caching."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from helpers import write_langid_stage
from tokenizers import Tokenizer

from xlmflow.storage import RunDir, load_output, read_table, stable_uniform
from xlmflow.tasks import vocab
from xlmflow.tasks.vocab import VocabParams, alignment, build_vocab, plan, sampling_rates

LANGS = ["de", "en", "fr", "ru", "zh"]
EN = [
    "The file is saved.",
    "Open the file and save it.",
    "The system starts.",
    "Select the table.",
    "Insert a new table.",
    "The document is open.",
    "Close the document.",
    "Print the page.",
]
FR = [
    "Le fichier est enregistré.",
    "Ouvrez le fichier et enregistrez-le.",
    "Le système démarre.",
    "Sélectionnez le tableau.",
    "Insérez un nouveau tableau.",
    "Le document est ouvert.",
    "Fermez le document.",
    "Imprimez la page.",
]
DE = [
    "Die Datei wird gespeichert.",
    "Öffnen Sie die Datei und speichern Sie sie.",
    "Das System startet.",
    "Wählen Sie die Tabelle.",
    "Fügen Sie eine neue Tabelle ein.",
    "Das Dokument ist offen.",
    "Schließen Sie das Dokument.",
    "Drucken Sie die Seite.",
]
RU = [
    "Файл сохранён.",
    "Откройте файл и сохраните его.",
    "Система запускается.",
    "Выберите таблицу.",
    "Вставьте новую таблицу.",
    "Документ открыт.",
    "Закройте документ.",
    "Напечатайте страницу.",
]
ZH = [
    "文件已保存。",
    "打开文件并保存。",
    "系统启动。",
    "选择表格。",
    "插入新表格。",
    "文档已打开。",
    "关闭文档。",
    "打印页面。",
]
SIDES = {"en": EN, "fr": FR, "de": DE, "ru": RU, "zh": ZH}


def corpus(repeat=12):
    odd = ["Café\u0301 naïve — 😀 tab\there\nnew line", "  leading and trailing  ", "ﬁ ligature Ⅻ ½", "مرحبا بالعالم"]
    docs = {lang: [f"{s} ({i})" for i in range(repeat) for s in SIDES[lang] + segments(lang)[:8]] for lang in LANGS}
    docs["en"] += odd
    return docs


LEXICON = {
    "en": ["file", "table", "window", "printer", "folder", "picture"],
    "fr": ["fichier", "tableau", "fenêtre", "imprimante", "dossier", "image"],
    "de": ["Datei", "Tabelle", "Fenster", "Drucker", "Ordner", "Bild"],
    "ru": ["файл", "таблица", "окно", "принтер", "папка", "рисунок"],
    "zh": ["文件", "表格", "窗口", "打印机", "目录", "图片"],
}


def segments(lang, triples=False):
    """Aligned toy segments: every ordered pair (or triple) of lexicon words; co-occurrence singles out translations."""
    w = LEXICON[lang]
    n = len(w)
    if triples:
        return [f"{w[i]} {w[j]} {w[k]}" for i in range(n) for j in range(n) for k in range(n) if len({i, j, k}) == 3][
            ::7
        ]
    return [f"{w[i]} {w[j]}" for i in range(n) for j in range(n) if i != j]


@pytest.fixture
def parallel(tmp_path):
    d = tmp_path / "parallel"
    d.mkdir()
    train = {lang: segments(lang) for lang in LANGS}
    pl.DataFrame({"id": [str(i) for i in range(len(train["en"]))], **train}).write_parquet(d / "toy.train.parquet")
    ev = {lang: segments(lang, triples=True) for lang in LANGS}
    pl.DataFrame({"id": [str(i) for i in range(len(ev["en"]))], **ev}).write_parquet(d / "toy.eval.parquet")
    return str(d)


def params(parallel, **kw):
    return VocabParams(vocab_size=400, report_docs=60, parallel=parallel, align_min_df=2, **kw)


def built(run_dir, parallel, **kw):
    run = RunDir.of(run_dir)
    ref = build_vocab(plan(run, params(parallel, **kw)))
    return run, ref, load_output(run.stage("vocab"), "vocab")


def test_temperature_rates_follow_the_formula():
    mix = sampling_rates({"en": 900, "fr": 90, "zh": 10}, 0.3, None)
    p = np.array([0.9, 0.09, 0.01])
    q = p**0.3 / (p**0.3).sum()
    assert np.allclose([mix[l]["q"] for l in ("en", "fr", "zh")], q)
    assert np.isclose(sum(mix[l]["rate"] * n for l, n in (("en", 900), ("fr", 90), ("zh", 10))), 1000)
    assert mix["zh"]["rate"] > 1 > mix["en"]["rate"]  # small languages are upsampled, large ones down
    flat = sampling_rates({"en": 900, "fr": 100}, 1.0, 500)
    assert np.isclose(flat["en"]["rate"], 0.5) and np.isclose(flat["fr"]["rate"], 0.5)


def test_sample_is_a_function_of_seed_and_doc_id_only():
    ids = pa.array([f"doc-{i}" for i in range(5000)])
    u = stable_uniform(ids, 7)
    assert np.array_equal(u, stable_uniform(ids.slice(0), 7))
    assert np.array_equal(u[1000:2000], stable_uniform(ids.slice(1000, 1000), 7))  # batch boundaries do not matter
    assert not np.array_equal(u, stable_uniform(ids, 8))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    k = vocab.copies(ids, 2.25, 7)
    assert set(np.unique(k)) == {2, 3} and abs(k.mean() - 2.25) < 0.03


def test_stage_outputs_autotokenizer_alignment_and_report(run_dir, parallel):
    from transformers import AutoTokenizer

    write_langid_stage(run_dir, corpus())
    run, ref, m = built(run_dir, parallel)
    assert m.stats["languages"] == LANGS and m.stats["vocab_size"] == 400
    loc = run.stage("vocab")
    tok = AutoTokenizer.from_pretrained(loc.path)
    assert (
        tok.is_fast and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>" and tok.bos_token == tok.eos_token
    )
    tags = [f"<lang:{l}>" for l in LANGS]
    assert set(tags) <= set(tok.all_special_tokens)
    ids = tok("<lang:fr> Le fichier<|endoftext|>")["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<lang:fr>") and ids[-1] == tok.eos_token_id
    assert len(set(tok.convert_tokens_to_ids(tags + ["<|endoftext|>", "<pad>"]))) == len(LANGS) + 2

    table = read_table(loc.child("alignment.parquet"))
    assert table.column_names[:4] == ["token_id", "anchor_id", "evidence", "score"]
    assert table.column("token_id").to_pylist() == list(range(len(tok)))
    df = pl.from_arrow(table)
    anchors = df["anchor_id"].to_numpy()
    assert np.array_equal(anchors[anchors], anchors)  # anchors are their own anchors: no chains
    assert df.filter(pl.col("token_id") == pl.col("anchor_id"))["evidence"].is_in(["self", "shared"]).all()
    report = json.loads(loc.child("report.json").open().read())
    assert report["roundtrip"]["failures"] == 0 and report["roundtrip"]["checked"] > 100
    assert set(report["sampling"]) == set(LANGS) and all(s["sampled_docs"] > 0 for s in report["sampling"].values())
    assert report["languages"]["zh"]["whole_word_share"] is None and report["languages"]["en"]["fertility"] > 0
    ev = pl.read_parquet(Path(parallel) / "toy.eval.parquet").filter(pl.col("en") != pl.col("fr"))
    raw = Tokenizer.from_file(loc.child("tokenizer.json").path)
    n_tokens = {
        lang: sum(len(e.ids) for e in raw.encode_batch(ev[lang].to_list(), add_special_tokens=False))
        for lang in ("en", "fr")
    }
    assert report["languages"]["fr"]["token_premium"] == pytest.approx(n_tokens["fr"] / n_tokens["en"], abs=1e-4)
    ru = pl.read_parquet(Path(parallel) / "toy.eval.parquet").filter(pl.col("en") != pl.col("ru"))
    n_bytes = {lang: sum(len(t.encode()) for t in ru[lang].to_list()) for lang in ("en", "ru")}
    assert n_bytes["ru"] > n_bytes["en"]  # Cyrillic takes two bytes a letter
    assert report["languages"]["ru"]["byte_premium"] == pytest.approx(n_bytes["ru"] / n_bytes["en"], abs=1e-4)
    assert set(report["vocabulary_overlap_jaccard"]) >= {"en-fr", "de-zh"}


def test_translation_pairs_are_learned_from_train_and_measured_on_eval(run_dir, parallel):
    write_langid_stage(run_dir, corpus())
    run, ref, m = built(run_dir, parallel)
    report = vocab.read_report(ref)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(run.stage("vocab").child("tokenizer.json").path)
    df = pl.from_arrow(read_table(run.stage("vocab").child("alignment.parquet")))
    trans = df.filter(pl.col("evidence").str.contains("translation"))
    assert trans.height > 0
    pairs = {
        (tok.decode([t]).strip(), tok.decode([a]).strip()) for t, a in trans.select("token_id", "anchor_id").rows()
    }
    assert ("Datei", "file") in pairs or ("fichier", "file") in pairs, sorted(pairs)[:30]
    # tie's rows: only across languages, to a partner of the same shape (word start, case)
    moved = df.filter(pl.col("tie_id") != pl.col("token_id"))
    assert moved.height > 0 and moved["evidence"].str.contains("translation|dictionary|transliterated").all()
    for t, a in moved.select("token_id", "tie_id").rows():
        assert alignment.shape(tok.decode([t])) == alignment.shape(tok.decode([a])), (tok.decode([t]), tok.decode([a]))
    prec = report["alignment"]["precision"]["translation"]
    assert prec["pairs_evaluated"] > 0 and prec["hit_rate"] > prec["chance_rate"]
    assert report["alignment"]["cross_language_pairs"] > 0 and report["alignment"]["examples"]


def test_tie_shares_rows_across_languages_only():
    """init folds case and word starts into one anchor; tie must not: ``The``/``the`` and ``Ġfile``/``file`` keep
    their own input rows, while ``fichier`` reads ``file``'s (a translation edge), each of its shapes its own
    partner's, and a transliterated ``Ġсистема`` reads ``Ġsistema``."""
    texts = [" the", " The", "the", " file", "file", " File", " fichier", "fichier", " Fichier", " sistema", " система"]
    rep, how = alignment.form_clusters([alignment.core(t) for t in texts])
    assert rep[1] == rep[0] and rep[4] == rep[3] and rep[10] == rep[9]  # init's clusters: case and word start folded
    tie = alignment.tie_rows(texts, rep, how, hops={int(rep[6]): int(rep[3])})  # the fichier -> file edge
    assert tie[:6].tolist() == [0, 1, 2, 3, 4, 5], "same-language forms keep their own rows"
    assert tie[6:9].tolist() == [3, 4, 5], "each fichier reads the file of its own shape"
    assert tie[9:].tolist() == [9, 9], "the transliterated form reads its partner's row"


def test_normalised_forms_and_transliteration_group_tokens():
    rep, how = alignment.form_clusters(["File", "file", "sistema", "Sistéma", "система", "на", "na", None])
    assert rep.tolist()[:5] == [0, 0, 2, 2, 2] and how[1] == "normalised" and how[4] == "transliterated"
    assert rep[5] == 5 and rep[6] == 6  # short non-Latin forms are not transliterated: too ambiguous


def test_decode_encode_roundtrip_on_clean_documents(run_dir, parallel):
    from transformers import AutoTokenizer

    docs = corpus()
    write_langid_stage(run_dir, docs)
    run, _, _ = built(run_dir, parallel)
    tok = AutoTokenizer.from_pretrained(run.stage("vocab").path)
    texts = pl.Series([t for lang in LANGS for t in docs[lang]]).str.normalize("NFC").to_list()
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    assert tok.batch_decode(ids) == texts


def test_same_inputs_same_bytes_and_rerun_is_a_no_op(tmp_path, parallel):
    runs = [str(tmp_path / n) for n in ("a", "b")]
    for r in runs:
        write_langid_stage(r, corpus())
        built(r, parallel)
    a, b = (RunDir.of(r).stage("vocab") for r in runs)
    files = load_output(a).files
    assert files == load_output(b).files  # same sha256 for every file, tokenizer.json included
    before = a.child("tokenizer.json").fs.modified(a.child("tokenizer.json").path)
    built(runs[0], parallel)
    assert a.child("tokenizer.json").fs.modified(a.child("tokenizer.json").path) == before
    _, ref2, _ = built(runs[0], parallel, alpha=0.7)
    assert ref2.fingerprint != load_output(b).fingerprint


def test_dictionary_pairs_and_bad_dictionary(run_dir, parallel, tmp_path):
    """A dictionary pair ties its source token to its target, a tie no other evidence makes: nothing else
    in the table changes. ``Sie`` (de) and ``the`` (en) are single word tokens of this vocabulary, share no
    form and never meet in the parallel segments, so without the dictionary both are their own anchors."""
    write_langid_stage(run_dir, corpus())
    run, _, _ = built(run_dir, parallel)
    loc = run.stage("vocab")
    tok = Tokenizer.from_file(loc.child("tokenizer.json").path)
    (src,), (tgt,) = tok.encode(" Sie").ids, tok.encode(" the").ids  # dictionary words are single tokens
    plain = pl.from_arrow(read_table(loc.child("alignment.parquet")))
    assert plain.row(src, named=True)["anchor_id"] == src and plain.row(tgt, named=True)["anchor_id"] == tgt
    assert not plain["evidence"].str.contains("dictionary").any()

    d = tmp_path / "dict.tsv"
    d.write_text("# de\ten\nSie\tthe\n", encoding="utf-8")
    run, _, _ = built(run_dir, parallel, dictionary=str(d))
    tied = pl.from_arrow(read_table(loc.child("alignment.parquet")))
    row = tied.row(src, named=True)
    assert (row["anchor_id"], row["evidence"], row["score"], row["anchor_lang"]) == (tgt, "dictionary", 1.0, "en")
    changed = plain.join(tied, on="token_id", suffix="_dict").filter(
        (pl.col("anchor_id") != pl.col("anchor_id_dict")) | (pl.col("evidence") != pl.col("evidence_dict"))
    )
    # only the source's form cluster moves (here: ĠSie alone), and it moves to the target
    same_form = [i for i in range(tok.get_vocab_size()) if tok.decode([i]).strip().casefold() == "sie"]
    assert src in same_form and changed["token_id"].to_list() == same_form
    assert set(changed["anchor_id_dict"]) == {tgt}

    # tie mode shares rows across languages only, with a partner of the same shape: ĠSie (word start, capital)
    # would read ĠThe, which this small vocabulary lacks, so it keeps its own row rather than read Ġthe's
    assert tok.token_to_id("ĠThe") is None and row["tie_id"] == src and tied.row(tgt, named=True)["tie_id"] == tgt
    assert (
        tied.filter(pl.col("tie_id") != pl.col("token_id"))["evidence"].str.contains("dictionary|translation|translit")
    ).all()

    d.write_text("only one column\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dict\.tsv: line 1 is not src<TAB>tgt"):
        built(run_dir, parallel, dictionary=str(d))


def test_missing_langid_stage_is_a_clear_error(run_dir, parallel):
    from xlmflow.storage import ManifestError

    with pytest.raises(ManifestError, match="run the langid stage first"):
        plan(RunDir.of(run_dir), params(parallel))


def test_fertility_is_per_character_in_unspaced_scripts(tmp_path):
    """zh/ja/th fertility is tokens per non-space character, labelled so; a spaced language's is tokens per word.
    Expected values by hand: every document encoded one at a time, words and characters counted by Python."""
    import re

    from xlmflow.storage import FileEntry, Location
    from xlmflow.tasks.vocab import fairness
    from xlmflow.tasks.vocab.fairness import language_usage

    docs = {"en": EN, "zh": ZH, "th": ["สวัสดีครับ ยินดีต้อนรับ", "เปิดไฟล์และบันทึก"]}
    tok = Tokenizer.from_str(_tiny_bpe(docs).to_str())
    files = {}
    for lang, texts in docs.items():
        path = f"lang={lang}/part-0.parquet"
        (tmp_path / f"lang={lang}").mkdir()
        ids = [f"{lang}-{i}" for i in range(len(texts))]
        pl.DataFrame({"doc_id": ids, "text": texts}).write_parquet(tmp_path / path)
        files[lang] = [FileEntry(path, 0, "", len(texts))]
    usage = language_usage(tok, Location.of(str(tmp_path)), files, docs_per_lang=100, seed=0, batch_rows=64)
    for lang, texts in docs.items():
        tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
        s = usage.stats[lang]
        assert s["docs"] == len(texts) and s["tokens"] == tokens
        if lang == "en":
            words = sum(len(re.findall(r"\w+", t)) for t in texts)
            assert (s["fertility"], s["fertility_unit"]) == (pytest.approx(tokens / words), "tokens per word")
        else:
            chars = sum(len(re.sub(r"\s", "", t)) for t in texts)
            assert (s["fertility"], s["fertility_unit"]) == (pytest.approx(tokens / chars), "tokens per character")
            assert s["fertility"] != pytest.approx(tokens / s["words"])  # the per-word figure would differ
    table = fairness.markdown(
        {
            "vocab_size": tok.get_vocab_size(),
            "roundtrip": {"checked": 1, "failures": 0},
            "languages": usage.stats,
            "alignment": {"cross_language_pairs": 0, "precision": {}, "coverage": {}, "examples": {}},
        }
    )
    assert f"| zh |  |  | {usage.stats['zh']['fertility']} /char |" in table
    assert f"| en |  |  | {usage.stats['en']['fertility']} |" in table


def _tiny_bpe(docs: dict[str, list[str]]):
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([t for texts in docs.values() for t in texts], trainer=trainer)
    return tok
