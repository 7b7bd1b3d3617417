"""The evaluation's outputs: ``metrics.json`` merged from the units, ``report.md`` (:mod:`.report_md`) and PNG
plots (:mod:`.plots`).

``metrics.json`` holds every model under ``models`` and the first model's figures at the top
(``bits_per_byte``, ``bits_per_char``, ``unigram_baseline``, ``beats_unigram``, ``retrieval``,
``generation_language_rate``, ``chrf``, ``bleu``, ``tokenizer``,
``contamination``, ``transfer``); with two or more models, ``comparison`` gives each one's figure
and its difference from the first, per language or pair.
"""

from __future__ import annotations

from typing import Any

from xlmflow.storage import Aside
from xlmflow.tasks.evaluate import plots, report_md


def merge(parts: list[dict], vocab_report: dict) -> dict[str, Any]:
    models: dict[str, dict] = {}

    def entry(name: str) -> dict:
        empty = {"retrieval": {}, "transfer": {}, "chrf": {}, "bleu": {}, "contamination": {}, "translation": {}}
        return models.setdefault(name, empty)

    for part in sorted(parts, key=lambda p: "finetuned" in p):  # the models' own parts first: they order `models`
        if "finetuned" in part:  # the fine-tuned models' figures: beside the model they were tuned from
            entry(part["tuned_from"]).setdefault("finetuned", {})[part["set"]] = part["finetuned"]
            continue
        m = entry(part["model"])
        if "set" not in part:  # the language-model unit
            m |= {k: part[k] for k in ("bits_per_byte", "token_perplexity", "generation_language_rate", "generations")}
            m |= {k: part[k] for k in ("bits_per_char", "unigram_baseline", "beats_unigram", "generation") if k in part}
            continue
        s = part["set"]
        m["retrieval"][s] = part["retrieval"]
        m["contamination"][s] = part["contamination"]
        if "transfer" in part:
            m["transfer"][s] = part["transfer"]
        if part.get("chrf"):
            m["chrf"][s] = sum(part["chrf"].values()) / len(part["chrf"])
            m["bleu"][s] = sum(part["bleu"].values()) / len(part["bleu"])
            m["chrf"] |= {f"{s}/{k}": v for k, v in part["chrf"].items()}
            m["bleu"] |= {f"{s}/{k}": v for k, v in part["bleu"].items()}
            m["translation"][s] = {
                "prompt_format": part["prompt_format"],
                "examples": part["translation_examples"],
                **part.get("translation", {}),  # per pair (``en-fr``): scores, copy baseline, intervals
            }
    tokenizer = {
        lang: {
            k: v.get(k)
            for k in (
                "fertility",
                "fertility_unit",
                "chars_per_token",
                "token_premium",
                "byte_premium",
                "whole_word_share",
            )
        }
        for lang, v in vocab_report.get("languages", {}).items()
    }
    first = next(iter(models.values()))
    out = {"models": models, "tokenizer": tokenizer, **first}
    if len(models) > 1:
        out["comparison"] = compare(models)
    return out


def compare(models: dict[str, dict]) -> dict[str, Any]:
    """Per language (BPB, bits per character, generation) and per set (mean retrieval, chrF++): each model's
    figure and its difference from the first model's; whether each model beats the unigram baseline (the run's
    train shards: the same baseline for every model, since bits per byte do not depend on the tokenizer)."""
    names = list(models)
    base = models[names[0]]

    def side(get, diffs: bool = True) -> dict:
        keys = sorted(set().union(*(get(m) for m in models.values())))
        return {
            k: {n: get(models[n]).get(k) for n in names}
            | {f"{n}-{names[0]}": _diff(get(models[n]).get(k), get(base).get(k)) for n in names[1:] if diffs}
            for k in keys
        }

    return {
        "bits_per_byte": side(lambda m: m.get("bits_per_byte", {})),
        "bits_per_char": side(lambda m: m.get("bits_per_char", {})),
        "beats_unigram": side(lambda m: m.get("beats_unigram", {}), diffs=False),
        "generation_language_rate": side(lambda m: m.get("generation_language_rate", {})),
        "retrieval_acc_at_1": side(lambda m: {s: r.get("acc_at_1") for s, r in m["retrieval"].items()}),
        "chrf": side(lambda m: {k: v for k, v in m["chrf"].items() if "/" not in k}),
    }


def _diff(a, b):
    return None if a is None or b is None else a - b


def write(aside: Aside, metrics: dict, train_rows: list[dict]) -> list[str]:
    """Plots (matplotlib, no timestamps in the files) and report.md into the stage's aside folder."""
    names = plots.write_plots(aside, metrics, train_rows)
    with aside.path("report.md").open("wb") as f:
        f.write(report_md.markdown(metrics, names).encode())
    return names
