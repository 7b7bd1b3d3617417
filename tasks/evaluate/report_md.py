"""``report.md``: the evaluation's tables from the merged ``metrics.json``, led by retrieval beside its lexical
baselines; then bits per byte beside the unigram baseline, and per model retrieval per layer, the transfer probe,
translation beside copying the source, contamination and generation. A file of the stage's output, so this module
counts in the code version (it is not presentation-only: a changed table must rewrite report.md)."""

from __future__ import annotations

import json
import math

from xlmflow.tasks.evaluate import nights


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def layer_choice(r: dict) -> str:
    """How a set's retrieval figure was chosen: ``layer 2 centred (chosen on the train part)``."""
    how = {"train_argmax": "chosen on the train part", "fixed_middle": "fixed middle layer: no train part"}
    kind = "centred" if r.get("centred") else "raw"
    return f"layer {r['layer']} {kind} ({how.get(r.get('layer_rule'), r.get('layer_rule'))})"


def markdown(metrics: dict, images: list[str] | None = None) -> str:
    """The report: tables of every measure, the plots, generated and translated texts."""
    models = list(metrics["models"])
    lines = ["# Evaluation", ""]
    lines += [f"Models: {', '.join(models)}. Lower bits per byte is better; accuracies are beside chance.", ""]
    lines += _headline_section(metrics, models)
    if "previous_model" in metrics:
        lines += nights.markdown(metrics["previous_model"])
    lines += _bits_per_byte_section(metrics, models)
    for m in models:
        mm = metrics["models"][m]
        lines += ["", f"## Cross-lingual retrieval ({m})", ""]
        lines += _retrieval_section(mm) + _transfer_section(mm) + _translation_section(mm) + _finetuned_section(mm)
        lines += _contamination_section(mm) + _generations_section(m, mm)
    if "comparison" in metrics:
        lines += ["", "## Comparison", "", "```json", json.dumps(metrics["comparison"], indent=1)[:4000], "```"]
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in images or []]
    return "\n".join(lines) + "\n"


def _bits_per_byte_section(metrics: dict, models: list[str]) -> list[str]:
    """Bits per byte and per character, nats per token and generation per language and model, beside the
    unigram baseline (its bits per byte, and whether the model beats it) and the tokenizer's figures."""
    lines = [
        "## Bits per byte and generation",
        "",
        "Bits per byte (BPB) and per character (BPC) of each language's valid documents, lower is better: every "
        "model reads the same text through its own tokenizer, in windows of its context sliding by half of it; the "
        "end of a document is scored and counts as one byte and one character. The unigram baseline is add-one "
        "smoothed token frequencies of the train shards (the run's tokenizer): a model above it has learnt less "
        "than token frequencies. Nats per token compare only models sharing the run's tokenizer.",
        "",
        "| language | unigram BPB | unigram nats/token | "
        + " | ".join(
            f"{m} BPB | {m} BPC | {m} beats unigram | {m} nats/token | {m} generation in-language" for m in models
        )
        + " | fertility | token premium |",
        "|---" * (3 + 5 * len(models) + 2) + "|",
    ]
    for lang in sorted(metrics["bits_per_byte"]):
        base = next((metrics["models"][m].get("unigram_baseline", {}).get(lang) for m in models), None) or {}
        cells = [_f(base.get("bits_per_byte")), _f(base.get("nats_per_token"))]
        for m in models:
            mm = metrics["models"][m]
            beats = mm.get("beats_unigram", {}).get(lang)
            ppl = mm.get("token_perplexity", {}).get(lang)
            cells += [
                _f(mm.get("bits_per_byte", {}).get(lang)),
                _f(mm.get("bits_per_char", {}).get(lang)),
                "n/a" if beats is None else ("yes" if beats else "**no**"),
                _f(math.log(ppl) if ppl else None),
                _f(mm.get("generation_language_rate", {}).get(lang), 2),
            ]
        t = metrics["tokenizer"].get(lang, {})
        per_char = " /char" if t.get("fertility_unit") == "tokens per character" and t.get("fertility") else ""
        lines.append(
            f"| {lang} | " + " | ".join(cells) + f" | {_f(t.get('fertility'), 2)}{per_char} | "
            f"{_f(t.get('token_premium'), 2) if t.get('token_premium') else 'n/a (pivot or no set)'} |"
        )
    lines += ["", "Fertility: tokens per word; per character (/char) in scripts that do not space words (zh, ja, th)."]
    return lines


def _headline_section(metrics: dict, models: list[str]) -> list[str]:
    """The report's lead: per parallel set, each model's translation retrieval beside the embedding layer, the
    lexical baselines and chance, and whether it beats lexical overlap (no figure chosen on the rows it shows)."""
    sets = sorted({s for m in models for s in metrics["models"][m]["retrieval"]})
    lines = []
    for s in sets:
        lines += [
            f"## Retrieval on {s}: does the model beat lexical overlap?",
            "",
            "acc@1 of translation retrieval on the eval part, mean over language pairs and both directions. "
            "The layer (and raw or per-language centred vectors) is chosen on the set's train part, or fixed in "
            "advance where the set has none; bag of tokens counts this model's token ids, char 3-gram TF-IDF "
            "uses no tokenizer.",
            "",
            "| model | layer | model acc@1 | embedding layer (0) | bag of tokens | char 3-gram TF-IDF | chance "
            "| beats lexical overlap |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in models:
            r = metrics["models"][m]["retrieval"].get(s)
            if r is None:
                continue
            if not r.get("pairs"):
                lines.append(f"| {m} | n/a | no language pair with two usable rows | | | | | |")
                continue
            lines.append(
                f"| {m} | {layer_choice(r)} | {_vs_baselines(r)} | {r['chance']:.3f} | "
                f"{'yes' if r['beats_baselines'] else 'no'} |"
            )
        lines.append("")
    return lines


def _vs_baselines(r: dict) -> str:
    """The cells every retrieval row shares: acc@1, the embedding layer's, bag of tokens, char 3-gram TF-IDF."""
    b = r["baselines"]
    return f"{r['acc_at_1']:.3f} | {r['embedding_acc_at_1']:.3f} | {b['bag_of_tokens']:.3f} | {b['char3_tfidf']:.3f}"


def _retrieval_section(mm: dict) -> list[str]:
    """One model's retrieval per parallel set: how the layer was chosen, every layer raw and centred, per pair."""
    lines = []
    for s, r in mm["retrieval"].items():
        if not r.get("pairs"):
            lines.append(f"- {s}: no language pair with two usable rows")
            continue
        lines += [
            f"**{s}**: {layer_choice(r)} of {r['n_layer']}; centring means from the {r['centring']}; mean acc@1 "
            f"{r['acc_at_1']:.3f} vs chance {r['chance']:.3f} ({r['n_pairs']} pairs).",
            "",
            "| layer | " + " | ".join(str(i) for i in range(len(r["per_layer"]["raw"]))) + " |",
            "|---" * (1 + len(r["per_layer"]["raw"])) + "|",
        ]
        lines += [
            f"| eval {kind} | " + " | ".join(f"{x:.3f}" for x in r["per_layer"][kind]) + " |"
            for kind in ("raw", "centred")
        ]
        if r.get("train_per_layer"):
            lines += [
                f"| train {kind} (chooses) | " + " | ".join(f"{x:.3f}" for x in r["train_per_layer"][kind]) + " |"
                for kind in ("raw", "centred")
            ]
        lines += [
            "",
            "| pair | acc@1 | embedding layer | bag of tokens | char 3-gram TF-IDF | rows | chance "
            "| dropped: empty / identical / wrong language |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, v in sorted(r["pairs"].items()):
            d = r["dropped"][k]
            lines.append(
                f"| {k} | {_vs_baselines(v)} | {v['rows']} | {v['chance']:.3f} | "
                f"{d['empty']} / {d['identical']} / {d['wrong_language']} |"
            )
        lines.append("")
    return lines


def _transfer_section(mm: dict) -> list[str]:
    """One model's transfer probe per parallel set: accuracy per language beside the majority baseline."""
    lines = []
    for s, t in mm["transfer"].items():
        if "accuracy" not in t:
            continue
        lines += [
            f"**Transfer probe on {s}** (logistic regression on English layer-{t['layer']}"
            f"{' centred' if t.get('centred') else ''} features (retrieval's choice) of "
            f"{t['train_rows']} train rows, {t['classes']} classes; train accuracy "
            f"{t['train_accuracy']:.3f}):",
            "",
            "| language | accuracy | majority baseline |",
            "|---|---|---|",
        ]
        lines += [
            f"| {lang} | {acc:.3f} | {t['majority_baseline'][lang]:.3f} |"
            for lang, acc in sorted(t["accuracy"].items())
        ]
        lines.append("")
    return lines


def _translation_section(mm: dict) -> list[str]:
    """One model's few-shot translation per parallel set: per pair the model's chrF++, BLEU (95% bootstrap
    intervals) and ROUGE beside copying the source, the sacrebleu signatures, an example or two."""

    def _ci(bounds, bare: bool = False) -> str:
        """``[lo, hi]``, one decimal; "n/a" (or nothing beside a figure) when there is none."""
        if not bounds:
            return "n/a" if bare else ""
        return f"[{bounds[0]:.1f}, {bounds[1]:.1f}]"

    lines = []
    for s, tr in mm["translation"].items():
        pairs = {k: v for k, v in tr.items() if isinstance(v, dict) and "chrf" in v}
        lines += [f"**Translation on {s}** (few-shot; prompt: `{tr['prompt_format']}`):", ""]
        if not pairs:  # an evaluation written before the per-pair scores
            lines += [
                "chrF++ "
                + ", ".join(f"{k.split('/')[1]} {v:.1f}" for k, v in mm["chrf"].items() if k.startswith(s + "/"))
                + "; BLEU "
                + ", ".join(f"{k.split('/')[1]} {v:.1f}" for k, v in mm["bleu"].items() if k.startswith(s + "/")),
                "",
            ]
        else:
            lines += [
                "Copy = the source text as the translation (names, numbers and placeholders pass through unchanged): "
                "a model is translating only where it beats copying. Intervals: 95% paired bootstrap over segments.",
                "",
                "| pair | n | chrF++ [95% CI] | copy chrF++ | chrF++ minus copy [95% CI] | BLEU [95% CI] | copy BLEU "
                "| ROUGE-1 / 2 / L | copy ROUGE-L |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for pair, v in sorted(pairs.items()):
                ci, copy = v.get("ci", {}), v.get("copy_baseline", {})
                lines.append(
                    f"| {pair} | {v.get('n', 'n/a')} | {v['chrf']:.1f} {_ci(ci.get('chrf'))} "
                    f"| {_f(copy.get('chrf'), 1)} | {_ci(ci.get('chrf_minus_copy'), bare=True)} "
                    f"| {v['bleu']:.1f} {_ci(ci.get('bleu'))} "
                    f"| {_f(copy.get('bleu'), 1)} | {_f(v.get('rouge_1'), 3)} / {_f(v.get('rouge_2'), 3)} / "
                    f"{_f(v.get('rouge_l'), 3)} | {_f(copy.get('rouge_l'), 3)} |"
                )
            sigs = sorted({f"{name}: `{sig}`" for v in pairs.values() for name, sig in v.get("signature", {}).items()})
            lines += ["", "sacrebleu signatures: " + "; ".join(sigs), ""]
        for pair, ex in list(tr["examples"].items())[:2]:
            for e in ex[:1]:
                lines += [
                    f"- {pair}: {_code(e['source'])} -> {_code(e['hypothesis'])} (reference {_code(e['reference'])})"
                ]
        lines.append("")
    return lines


def _finetuned_section(mm: dict) -> list[str]:
    """The finetune stage's models on a set's eval part: translation per pair (chrF++ beside the few-shot model's and
    the copy baseline's, BLEU, ROUGE-L, an example or two) and zero-shot classification per language (beside the
    majority class and the frozen-feature probe)."""
    lines = []
    for s, ft in mm.get("finetuned", {}).items():
        if ft.get("translation", {}).get("translation"):
            lines += _finetuned_translation(s, ft["translation"], mm["translation"].get(s, {}))
        if ft.get("classification", {}).get("per_language"):
            lines += _finetuned_classification(s, ft["classification"], mm["transfer"].get(s, {}))
    return lines


def _finetuned_translation(s: str, ft: dict, few: dict) -> list[str]:
    lines = [
        f"**Fine-tuned translation on {s}** (the finetune stage's model; prompt: `{ft['prompt_format']}`), beside "
        "the few-shot pretrained model and copying the source, on the same segments:",
        "",
        "| pair | n | fine-tuned chrF++ [95% CI] | few-shot chrF++ | copy chrF++ | fine-tuned minus copy [95% CI] "
        "| fine-tuned BLEU | copy BLEU | fine-tuned ROUGE-L | copy ROUGE-L |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair, v in sorted(ft["translation"].items()):
        ci, copy = v.get("ci", {}), v.get("copy_baseline", {})
        lo_hi = ci.get("chrf_minus_copy")
        lines.append(
            f"| {pair} | {v['n']} | {v['chrf']:.1f} [{ci['chrf'][0]:.1f}, {ci['chrf'][1]:.1f}] "
            f"| {_f(few.get(pair, {}).get('chrf'), 1)} | {_f(copy.get('chrf'), 1)} "
            f"| {'n/a' if not lo_hi else f'[{lo_hi[0]:.1f}, {lo_hi[1]:.1f}]'} | {v['bleu']:.1f} "
            f"| {_f(copy.get('bleu'), 1)} | {_f(v.get('rouge_l'), 3)} | {_f(copy.get('rouge_l'), 3)} |"
        )
    lines.append("")
    for pair, ex in list(ft["examples"].items())[:3]:
        for e in ex[:1]:
            lines += [f"- {pair}: {_code(e['source'])} -> {_code(e['hypothesis'])} (reference {_code(e['reference'])})"]
    return lines + [""]


def _finetuned_classification(s: str, c: dict, probe: dict) -> list[str]:
    per_probe = probe.get("accuracy", {}) if isinstance(probe, dict) else {}
    lines = [
        f"**Zero-shot classification on {s}** (a classifier fine-tuned on {c['trained_on']} rows of the train part, "
        f"{len(c['classes'])} classes from the segment ids; tested on every language's eval rows), beside the "
        f"majority class ({c['majority_class']}) and the frozen-feature probe:",
        "",
        "| language | n | fine-tuned accuracy | majority class | probe accuracy |",
        "|---|---|---|---|---|",
    ]
    for lang, v in sorted(c["per_language"].items()):
        lines.append(
            f"| {lang} | {v['n']} | {v['accuracy']:.3f} | {v['majority']:.3f} | {_f(per_probe.get(lang), 3)} |"
        )
    return lines + [""]


def _contamination_section(mm: dict) -> list[str]:
    """One model's contamination per parallel set: the share of eval segments sharing an n-unit n-gram with the
    train shards, out of the segments long enough to hold one (shorter ones are counted apart), then per language."""
    lines = [
        "**Contamination** (eval segments sharing an n-gram of n text units, ~n tokens of a 16k vocabulary, with the "
        "train shards, out of the segments of",
        "at least n units; shorter segments cannot share one and are counted apart):",
        "",
    ]

    def share(c: dict) -> str:
        pct = "n/a" if c["share"] is None else f"{100 * c['share']:.1f}%"
        return f"{pct} ({c['contaminated']}/{c['eligible']})"

    for s, c in mm["contamination"].items():
        langs = ", ".join(f"{lang} {share(v)}" for lang, v in sorted(c["per_language"].items()))
        lines.append(f"- {s} ({c['n']}-grams): {share(c)}, {c['too_short']} too short; {langs}")
    return lines


def _generations_section(m: str, mm: dict) -> list[str]:
    """Model ``m``'s generation per language: the in-language rate with degenerate texts as misses, ``n``, the
    degenerate count, distinct-2 and ROUGE against the document's own continuation; then the greedy and sampled
    continuation of its first prompt."""
    lines = []
    gen = mm.get("generation", {})
    if gen:
        lines += [
            "",
            f"**Generation** ({m}): greedy and sampled (T=0.8, top-k 50) continuations of valid-document prompts. "
            "In-language = the LID model of the langid stage labels it the prompted language; a degenerate text "
            "(no letter, or distinct-2 < 0.5: a loop) is a miss whatever LID says. ROUGE-L is against the "
            "document's own next tokens.",
            "",
            "| language | prompts | n | in-language (all / greedy / sampled) | degenerate | distinct-2 | ROUGE-L |",
            "|---|---|---|---|---|---|---|",
        ]
        for lang, g in sorted(gen.items()):
            lines.append(
                f"| {lang} | {g['prompts']} | {g['n']} | {g['rate']:.2f} / {g['greedy']['rate']:.2f} / "
                f"{g['sampled']['rate']:.2f} | {g['degenerate']} of {g['n']} | {_f(g.get('distinct_2'), 2)} "
                f"| {_f(g.get('rouge_l'), 3)} |"
            )
    lines += ["", f"**Generations** ({m}; first prompt per language):", ""]
    for lang, gens in sorted(mm.get("generations", {}).items()):
        if not gens:
            continue
        g = gens[0]
        lines.append(f"- {lang}: {_code(g['prompt'])} -> greedy {_code(g['greedy'])}; sampled {_code(g['sampled'])}")
    return lines


def _code(text: str) -> str:
    """A clipped text as inline code, or "(empty)": an empty generation must not show as a bare pair of backticks."""
    clipped = _clip(text)
    return f"`{clipped}`" if clipped else "(empty)"


def _clip(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return text if len(text) <= n else text[: n - 1] + "…"
