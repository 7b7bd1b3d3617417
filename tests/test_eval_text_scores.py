"""Scores of generated text (tasks/evaluate/scores.py) and the generation/translation parts of the evaluation that
use them: ROUGE on non-Latin scripts, bootstrap intervals, the copy-the-source baseline, degenerate output,
sampling that does not depend on torch's global generator, the LID model the langid stage used, the report.

Pure functions on hand-made strings; a tiny random model only for the sampling test. Expected values are worked
out by hand in the comments.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from shard_fixtures import tiny_tokenizer
from test_eval_measures import doc, make_model

from xlmflow.storage import Location, RunDir
from xlmflow.storage.manifest import MANIFEST, Manifest
from xlmflow.tasks.evaluate import measures as E
from xlmflow.tasks.evaluate import report_md, units
from xlmflow.tasks.evaluate import scores as S
from xlmflow.tasks.langid import lid


# ---------------------------------------------------------------- ROUGE
@pytest.mark.parametrize(
    "ref, partial, expected, disjoint",
    [
        # zh: characters. 6 chars, 5 shared: R1 = LCS = 5/6; bigrams 4 of 5 shared: R2 = 0.8
        ("我喜欢我的猫", "我喜欢我的狗", (5 / 6, 0.8, 5 / 6), "今天下雨"),
        # ru: words. 3 of 4 shared: R1 = LCS = 0.75; bigrams: only "на ковре" of 3: R2 = 1/3
        ("кошка сидит на ковре", "кошка лежит на ковре", (0.75, 1 / 3, 0.75), "собака бежит домой"),
        # ar: words (diacritics kept inside them). As ru.
        ("القطة تجلس على السجادة", "القطة تنام على السجادة", (0.75, 1 / 3, 0.75), "ذهب الولد إلى المدرسة"),
    ],
    ids=["zh", "ru", "ar"],
)
def test_rouge_scores_non_latin_scripts(ref, partial, expected, disjoint):
    from rouge_score.rouge_scorer import RougeScorer

    assert RougeScorer(["rouge1"]).score(ref, ref)["rouge1"].fmeasure == 0  # the default tokenizer: why ours exists
    assert S.rouge([ref], [ref]) == {"rouge_1": 1.0, "rouge_2": 1.0, "rouge_l": 1.0}
    got = S.rouge([partial], [ref])
    assert [got["rouge_1"], got["rouge_2"], got["rouge_l"]] == pytest.approx(list(expected))
    assert S.rouge([disjoint], [ref]) == {"rouge_1": 0.0, "rouge_2": 0.0, "rouge_l": 0.0}


def test_tokens_characters_for_unspaced_scripts_words_elsewhere():
    assert S.tokens(["日本語のテキスト abc"]) == [["日", "本", "語", "の", "テ", "キ", "ス", "ト", "abc"]]
    assert S.tokens(["Привет, МИР! e-mail 42"]) == [["привет", "мир", "e", "mail", "42"]]
    assert S.tokens(["مَرْحَبًا"]) == [["مَرْحَبًا"]]  # harakat stay in their word
    assert S.tokens(["ًًًً", "", None]) == [[], [], []]  # marks alone are no token


# ---------------------------------------------------------------- chrF++ / BLEU: bootstrap and copy baseline
def _corpus(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """n references; hypotheses that drop a random share of each reference's words; sources in another language."""
    rng = np.random.default_rng(seed)
    words = "the cat dog sat ran on a mat home far away from today big small red".split()
    refs = [" ".join(rng.choice(words, size=rng.integers(5, 12))) for _ in range(n)]
    hyps = [" ".join(w for w in r.split() if rng.random() > rng.uniform(0.1, 0.7)) for r in refs]
    sources = [f"le chat {i} et le chien" for i in range(n)]
    return hyps, refs, sources


def test_bootstrap_interval_holds_the_score_and_narrows_with_more_segments():
    from sacrebleu.metrics import BLEU, CHRF

    widths = {}
    for n in (20, 320):
        hyps, refs, sources = _corpus(n, seed=n)
        got = S.translation_scores(hyps, refs, sources, "en", resamples=300, seed=0)
        assert got["n"] == n
        assert got["chrf"] == pytest.approx(CHRF(word_order=2).corpus_score(hyps, [refs]).score)
        assert got["bleu"] == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
        for name in ("chrf", "bleu"):
            lo, hi = got["ci"][name]
            assert lo <= got[name] <= hi and lo < hi
        widths[n] = got["ci"]["chrf"][1] - got["ci"]["chrf"][0]
        assert "nc:6|nw:2" in got["signature"]["chrf"] and "tok:13a" in got["signature"]["bleu"]
        assert "bs:300" in got["signature"]["chrf"]  # the signature names the resampling
    assert widths[320] < widths[20] / 2  # ~ 1 / sqrt(n): 16x the segments, ~4x narrower
    again = S.translation_scores(*_corpus(20, seed=20), "en", resamples=300, seed=0)
    assert again["ci"] == S.translation_scores(*_corpus(20, seed=20), "en", resamples=300, seed=0)["ci"]


def test_copy_baseline_scores_the_source_as_the_hypothesis():
    from sacrebleu.metrics import BLEU, CHRF

    hyps, refs, _ = _corpus(30, seed=1)
    sources = [r.replace("cat", "chat").replace("dog", "chien") for r in refs]  # a copy shares much with the ref
    got = S.translation_scores(hyps, refs, sources, "fr", resamples=200)
    assert got["copy_baseline"]["chrf"] == pytest.approx(CHRF(word_order=2).corpus_score(sources, [refs]).score)
    assert got["copy_baseline"]["bleu"] == pytest.approx(BLEU().corpus_score(sources, [refs]).score)
    assert got["copy_baseline"]["rouge_l"] == pytest.approx(S.rouge(sources, refs)["rouge_l"])
    assert got["copy_baseline"]["chrf"] > 50  # copying is far from zero when source and reference share words
    same = S.translation_scores(sources, refs, sources, "fr", resamples=200)  # the model copies: no difference
    assert same["ci"]["chrf_minus_copy"] == [0.0, 0.0]
    assert same["chrf"] == same["copy_baseline"]["chrf"]


def test_no_segments_scores_zero_without_error():
    got = S.translation_scores([], [], [], "zh")
    assert got["n"] == 0 and got["chrf"] == 0.0 and got["ci"] == {} and got["copy_baseline"]["chrf"] == 0.0


def test_zh_bleu_signature_uses_the_zh_tokenizer():
    got = S.translation_scores(["我喜欢我的猫和狗"], ["我喜欢我的猫和鱼"], ["I like my fish"], "zh", resamples=50)
    assert "tok:zh" in got["signature"]["bleu"] and got["bleu"] > 30
    assert got["rouge_1"] == pytest.approx(7 / 8)  # 我 x2, 喜欢的猫和: 7 of 8 characters shared


# ---------------------------------------------------------------- degenerate generations
def test_degenerate_texts():
    bad = ["the the the the", "ًًًًًً", "", "   ", "!!!!", "اًًًًًًًً", "ــــــــ", "ha ha ha ha ha ha"]
    good = ["The weather is lovely today and we are going to the park.", "我喜欢我的猫和狗", "Bonjour", "a b"]
    assert S.degenerate(bad).tolist() == [True] * len(bad)
    assert S.degenerate(good).tolist() == [False] * len(good)
    assert S.distinct_2("the the the the") == pytest.approx(1 / 3)  # 3 bigrams, one distinct
    assert S.distinct_2("a b c d") == 1.0


def test_language_rate_counts_degenerate_texts_as_misses():
    lid_model = lid.load_model(lid.model_file(None))
    loop = "the the the the the the the the the the the the"
    assert units.detected(lid_model, [loop], "en").tolist() == [True]  # LID alone calls the loop English
    assert E.language_hits(lid_model, [loop, "I would like a cup of coffee, please."], "en").tolist() == [False, True]
    assert E.language_rate(lid_model, [loop, "I would like a cup of coffee, please."], "en") == 0.5


# ---------------------------------------------------------------- sampling on threads
def test_sampled_generation_is_reproducible_on_threads_and_leaves_the_global_generator_alone():
    tok = tiny_tokenizer()
    model = make_model(tok, n_positions=32)
    prompts = [doc(tok, "the cat")[:-1].tolist(), doc(tok, "le chien court")[:-1].tolist()]

    def run(seed):
        return E.generate(model, tok, prompts, 8, sample=True, seed=seed)

    torch.manual_seed(1)
    alone = run(7)
    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    run(7)
    assert torch.equal(torch.rand(3), expected_next)  # generate neither reads nor reseeds the global generator
    assert run(8) != alone  # the seed matters (random weights: tokens are near uniform)

    results: dict[int, list] = {}
    start = threading.Barrier(3)

    def worker(k: int) -> None:
        start.wait()
        results[k] = [run(7) for _ in range(2)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == alone for rs in results.values() for r in rs)
    assert units.generation_seed(0, "en") != units.generation_seed(0, "fr")
    assert units.generation_seed(0, "en") == units.generation_seed(0, "en")


def test_batched_translation_equals_one_prompt_at_a_time():
    """Prompts of different lengths share a batch left-padded: each row must continue as it would alone."""
    tok = tiny_tokenizer()
    model = make_model(tok, n_positions=64)
    sources = ["the dog", "a mat", "the cat sat on a mat", "le chien court", "the dog ran far away from home"]
    shots = [("the cat", "le chat")]
    alone, fmt = E.translate(model, tok, shots, sources, "en", "fr", 8, batch_size=1)
    together, fmt2 = E.translate(model, tok, shots, sources, "en", "fr", 8, batch_size=4)
    assert together == alone and fmt == fmt2
    assert len({len(tok.encode(s).ids) for s in sources}) > 2  # the batch really mixes lengths


# ---------------------------------------------------------------- the LID model of the langid stage
def _langid_manifest(run: RunDir, model_sha: str) -> None:
    loc = run.stage("langid")
    loc.makedirs()
    with loc.child(MANIFEST).open("wb") as f:
        f.write(Manifest(stage="langid", fingerprint="x", code_version="c", params={"model": model_sha}).to_json())


def test_evaluation_uses_the_lid_model_langid_used(tmp_path):
    from xlmflow.storage import write_record

    bundled = lid.model_file(None)
    run = RunDir.of(str(tmp_path / "run"))
    _langid_manifest(run, lid.model_fingerprint(bundled))
    assert units.lid_model_path(run) == bundled  # no configured model: the bundled one, which langid used

    other = tmp_path / "glotlid.bin"
    other.write_bytes(b"not the bundled model")
    write_record(run, {"langid": {"model_path": str(other)}})
    with pytest.raises(ValueError, match="another file"):  # langid ran with lid.176, the record names another
        units.lid_model_path(run)

    _langid_manifest(run, lid.model_fingerprint(str(other)))  # langid ran with the configured model
    assert units.lid_model_path(run) == str(other)
    copy = tmp_path / "lid-copy.ftz"
    shutil.copy(bundled, copy)
    write_record(run, {"langid": {"model_path": str(copy)}})
    _langid_manifest(run, lid.model_fingerprint(bundled))
    assert Location(units.lid_model_path(run)).name == "lid-copy.ftz"  # same content: accepted


# ---------------------------------------------------------------- the report
def test_report_sections_show_the_new_figures():
    pair = {
        "chrf": 31.25,
        "bleu": 4.5,
        "rouge_1": 0.3,
        "rouge_2": 0.1,
        "rouge_l": 0.25,
        "n": 100,
        "ci": {"chrf": [29.0, 33.5], "bleu": [3.0, 6.0], "chrf_minus_copy": [-2.0, 1.5]},
        "copy_baseline": {"chrf": 30.75, "bleu": 8.0, "rouge_l": 0.2},
        "signature": {"chrf": "nrefs:1|nc:6|nw:2", "bleu": "nrefs:1|tok:13a"},
    }
    mm = {
        "chrf": {"s/en-fr": 31.25},
        "bleu": {"s/en-fr": 4.5},
        "translation": {"s": {"prompt_format": "fmt", "examples": {}, "en-fr": pair}},
        "generation": {
            "ar": {
                "prompts": 20,
                "n": 40,
                "rate": 0.25,
                "greedy": {"rate": 0.0, "degenerate": 20},
                "sampled": {"rate": 0.5, "degenerate": 3},
                "degenerate": 23,
                "distinct_2": 0.41,
                "rouge_l": 0.05,
            }
        },
        "generations": {"ar": [{"prompt": "p", "greedy": "ًًًً", "sampled": "s"}]},
    }
    text = "\n".join(report_md._translation_section(mm))
    assert "| en-fr | 100 | 31.2 [29.0, 33.5] | 30.8 | [-2.0, 1.5] | 4.5 [3.0, 6.0] | 8.0 |" in text
    assert "0.300 / 0.100 / 0.250 | 0.200 |" in text and "nrefs:1|tok:13a" in text
    gen = "\n".join(report_md._generations_section("m", mm))
    assert "| ar | 20 | 40 | 0.25 / 0.00 / 0.50 | 23 of 40 | 0.41 | 0.050 |" in gen


def test_generation_prompts_only_documents_the_lid_model_labels_the_prompted_language():
    """A Catalan sentence in the fr shard would ask the model to continue in Catalan: it is passed over."""
    tok = tiny_tokenizer()
    model = make_model(tok, n_positions=128)
    lid_model = lid.load_model(lid.model_file(None))
    catalan = doc(tok, "Aquest fitxer conté la configuració de la impressora i dels seus controladors nous")
    french = doc(tok, "Ce fichier contient la configuration de l'imprimante et de ses nouveaux pilotes")
    k = min(len(catalan), len(french)) - 4
    p = {"prompt_tokens": k, "gen_tokens": 3, "prompts": 1, "seed": 0}
    out, texts = units._generation(model, tok, lid_model, [catalan, french], "fr", p, batch=2)
    assert out["prompts"] == 1 and [t["prompt"] for t in texts] == [tok.decode(french[1:k].tolist())]
    out, texts = units._generation(model, tok, lid_model, [catalan], "fr", p, batch=2)
    assert out["prompts"] == 0 and texts == []


def test_generation_prompts_end_on_whole_characters():
    """A prompt cut inside a UTF-8 character would make the continuation start with U+FFFD (read as no text):
    the prompt is shortened to the last whole character, and the reference starts where the prompt ends."""
    tok = tiny_tokenizer()
    text = "配置文件包含打印机的设置和驱动程序的新版本"
    zh = doc(tok, text)
    cuts = [k for k in range(3, len(zh) - 2) if tok.decode(zh[1:k].tolist()).endswith("\ufffd")]
    assert cuts, "the tokenizer keeps every character whole: the test needs byte-level pieces"
    k = cuts[-1]
    j = E.whole_character_cut(tok, zh, k)
    assert 1 < j < k and text.startswith(tok.decode(zh[1:j].tolist()))
    assert E.whole_character_cut(tok, zh, j) == j, "a cut on a boundary stays"
    model = make_model(tok, n_positions=128)
    lid_model = lid.load_model(lid.model_file(None))
    p = {"prompt_tokens": k, "gen_tokens": 2, "prompts": 1, "seed": 0}
    out, texts = units._generation(model, tok, lid_model, [zh], "zh", p, batch=2)
    assert out["prompts"] == 1 and texts[0]["prompt"] == tok.decode(zh[1:j].tolist())
    assert text == texts[0]["prompt"] + tok.decode(zh[j:].tolist(), skip_special_tokens=True)
