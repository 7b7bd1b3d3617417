"""Scores of generated text against references: ROUGE that keeps every script, chrF++/BLEU with a paired bootstrap
interval and sacrebleu's signature, the copy-the-source baseline, and degenerate output. Plain functions over
strings and arrays, no model: the units call them on what the measures generate.

Why a tokenizer of our own: rouge-score's default one deletes every character outside ``[a-z0-9]``, so any
Chinese, Russian or Arabic text scores 0. Why a paired bootstrap over sentence statistics: chrF and BLEU are
computed from statistics summed over the corpus, so a resample is a weighted sum of the segments' statistics (one
matrix product for all resamples), and the model and the baseline see the same resamples.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: scripts written without spaces between words: each character is a token (as chrF and sacrebleu's zh/char do)
_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_WORD_START = rf"[[\p{{L}}\p{{N}}]--[{_UNSPACED}]]"
#: a character of an unspaced script, or a word: a letter or digit, then letters, digits and combining marks
TOKEN = rf"[{_UNSPACED}]|{_WORD_START}[\p{{M}}{_WORD_START[1:-1]}]*"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
DEGENERATE_DISTINCT_2 = 0.5  # below this share of distinct bigrams a text is a loop ("the the the")


def tokens(texts: list[str | None]) -> list[list[str]]:
    """Lower-cased tokens of each text: characters in unspaced scripts (zh, ja, th, ...), Unicode words elsewhere.

    Punctuation and stray combining marks are not tokens; a word keeps its diacritics (Arabic harakat).
    """
    series = pl.Series(texts, dtype=pl.String).fill_null("").str.to_lowercase()
    return [list(t) for t in series.str.extract_all(TOKEN).to_list()]


class ScriptTokenizer:
    """rouge-score's tokenizer protocol (an object with ``tokenize(text)``) over :func:`tokens`, the texts it will
    be asked for tokenised beforehand in one vectorised call (rouge-score asks one text at a time)."""

    def __init__(self, texts: list[str] = ()):
        self.known = dict(zip(texts, tokens(list(texts)))) if texts else {}

    def tokenize(self, text: str) -> list[str]:
        found = self.known.get(text)
        return list(found) if found is not None else tokens([text])[0]


def rouge(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over segments (rouge-score, :class:`ScriptTokenizer`); 0.0 for no segments."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=ScriptTokenizer([*dict.fromkeys([*hyps, *refs])]))
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs, strict=True)]
    return {
        f"rouge_{t.removeprefix('rouge').lower()}": float(np.mean([s[t].fmeasure for s in scores])) if scores else 0.0
        for t in ROUGE_TYPES
    }


def sacre_metrics(tgt: str):
    """(chrF++, BLEU) as sacrebleu objects. chrF++ works on characters, so it is fair to unspaced scripts; BLEU
    needs words: the zh tokenizer for Chinese, characters for Japanese (no MeCab here), else 13a."""
    from sacrebleu.metrics import BLEU, CHRF

    return CHRF(word_order=2), BLEU(tokenize={"zh": "zh", "ja": "char"}.get(tgt, "13a"))


def segment_stats(metric, hyps: list[str], refs: list[str]) -> np.ndarray:
    """sacrebleu's per-segment statistics, [segments, k]: their column sums give the corpus score."""
    stats = metric._extract_corpus_statistics(hyps, [refs])  # what sacrebleu's own bootstrap resamples
    return np.asarray(stats, dtype=np.float64).reshape(len(hyps), -1)


def corpus_score(metric, summed: np.ndarray) -> float:
    """The corpus score from summed statistics (sacrebleu's formula)."""
    return float(metric._compute_score_from_stats(summed).score)


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] counts of each segment in a bootstrap resample (n draws with replacement each)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def bootstrap(metric, stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The score of every resample: the weighted statistics summed in one product, then sacrebleu's formula."""
    return np.array([corpus_score(metric, s) for s in weights @ stats])


def interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """The percentile interval of bootstrap samples."""
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def translation_scores(
    hyps: list[str], refs: list[str], sources: list[str], tgt: str, resamples: int = 1000, seed: int = 0
) -> dict:
    """Every score of one translated pair: chrF++, BLEU, ROUGE-1/2/L, ``n`` segments, 95% bootstrap intervals,
    and the same scores of copying the source (the hypothesis is the source text), beside them.

    Names, numbers and placeholders pass through a translation unchanged, so copying scores well above zero:
    a model's score means something only above the copy's. ``ci.chrf_minus_copy`` is the paired interval of the
    model's chrF++ minus the copy's (the same resamples for both): above zero, the model beats copying.
    """
    n = len(hyps)
    out: dict = {"n": n}
    sigs, ci, copy, copy_samples = {}, {}, {}, {}
    weights = resample_weights(n, resamples, seed) if n else np.zeros((0, 0))
    for name, metric in zip(("chrf", "bleu"), sacre_metrics(tgt), strict=True):
        for who, hyp in (("model", hyps), ("copy", sources)):
            if not n:
                (out if who == "model" else copy)[name] = 0.0
                continue
            stats = segment_stats(metric, hyp, refs)
            score, samples = corpus_score(metric, stats.sum(0)), bootstrap(metric, stats, weights)
            if who == "model":
                out[name], ci[name], model_samples = score, interval(samples), samples
            else:
                copy[name], copy_samples[name] = score, samples
        if n:
            if name == "chrf":
                ci["chrf_minus_copy"] = interval(model_samples - copy_samples[name])
            metric.n_bootstrap, metric.seed = resamples, seed  # the signature names the resampling
            sigs[name] = metric.get_signature().format()
    out |= rouge(hyps, refs)
    copy["rouge_l"] = rouge(sources, refs)["rouge_l"]
    return out | {"ci": ci, "copy_baseline": copy, "signature": sigs}


def distinct_2(text: str | None) -> float:
    """Distinct bigrams / bigrams of a text's tokens (:func:`tokens`; its characters when it has fewer than three
    tokens, so one repeated letter or mark is a loop too). 1.0 when there is no bigram at all."""
    return float(distinct_2s([text])[0])


def distinct_2s(texts: list[str | None]) -> np.ndarray:
    """:func:`distinct_2` of each text, the texts tokenised in one call."""
    out = np.ones(len(texts))
    for i, (text, toks) in enumerate(zip(texts, tokens(texts))):
        units = toks if len(toks) >= 3 else [c for c in (text or "") if not c.isspace()]
        pairs = list(zip(units, units[1:]))
        out[i] = len(set(pairs)) / len(pairs) if pairs else 1.0
    return out


def degenerate(texts: list[str | None]) -> np.ndarray:
    """One bool per text: no letter or digit at all (empty, punctuation, marks: "ًًًً"), or a loop
    (:func:`distinct_2` below 0.5: "the the the the"). A degenerate generation counts as a miss, whatever
    language a language-ID model calls it."""
    series = pl.Series(texts, dtype=pl.String).fill_null("")
    empty = ~series.str.contains(r"[\p{L}\p{N}]").to_numpy()
    looping = distinct_2s(series.to_list()) < DEGENERATE_DISTINCT_2
    return empty | looping
