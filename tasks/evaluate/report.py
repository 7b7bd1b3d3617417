"""The evaluation's outputs: ``metrics.json`` merged from the units, ``report.md``, PNG plots, Prefect artifacts.

``metrics.json`` holds every model under ``models`` and the first model's figures at the top
(``bits_per_byte``, ``retrieval``, ``generation_language_rate``, ``chrf``, ``bleu``, ``tokenizer``,
``contamination``, ``transfer``); with two or more models, ``comparison`` gives each one's figure
and its difference from the first, per language or pair.
"""

from __future__ import annotations

import io
import json
from typing import Any

from xlmflow.storage import Aside


def merge(parts: list[dict], vocab_report: dict) -> dict[str, Any]:
    models: dict[str, dict] = {}
    for part in parts:
        m = models.setdefault(
            part["model"],
            {"retrieval": {}, "transfer": {}, "chrf": {}, "bleu": {}, "contamination": {}, "translation": {}},
        )
        if "set" not in part:  # the language-model unit
            m |= {k: part[k] for k in ("bits_per_byte", "token_perplexity", "generation_language_rate", "generations")}
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
            m["translation"][s] = {"prompt_format": part["prompt_format"], "examples": part["translation_examples"]}
    tokenizer = {
        lang: {
            k: v.get(k) for k in ("fertility", "chars_per_token", "token_premium", "byte_premium", "whole_word_share")
        }
        for lang, v in vocab_report.get("languages", {}).items()
    }
    first = next(iter(models.values()))
    out = {"models": models, "tokenizer": tokenizer, **first}
    if len(models) > 1:
        out["comparison"] = compare(models)
    return out


def compare(models: dict[str, dict]) -> dict[str, Any]:
    """Per language (BPB, generation) and per set (mean retrieval, chrF++): each model's figure and its
    difference from the first model's."""
    names = list(models)
    base = models[names[0]]

    def side(get) -> dict:
        keys = sorted(set().union(*(get(m) for m in models.values())))
        return {
            k: {n: get(models[n]).get(k) for n in names}
            | {f"{n}-{names[0]}": _diff(get(models[n]).get(k), get(base).get(k)) for n in names[1:]}
            for k in keys
        }

    return {
        "bits_per_byte": side(lambda m: m.get("bits_per_byte", {})),
        "generation_language_rate": side(lambda m: m.get("generation_language_rate", {})),
        "retrieval_mean_acc_at_1": side(lambda m: {s: r.get("mean_acc_at_1") for s, r in m["retrieval"].items()}),
        "chrf": side(lambda m: {k: v for k, v in m["chrf"].items() if "/" not in k}),
    }


def _diff(a, b):
    return None if a is None or b is None else a - b


# ---------------------------------------------------------------- plots and the report
def _png(aside: Aside, name: str, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    with aside.path(name).open("wb") as f:
        f.write(buf.getvalue())


def write(aside: Aside, metrics: dict, train_rows: list[dict]) -> list[str]:
    """Plots (matplotlib, no timestamps in the files) and report.md into the stage's aside folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = []
    langs = sorted(metrics["bits_per_byte"])
    fig, ax = plt.subplots(figsize=(max(6, len(langs) * 0.45), 3.5))
    width = 0.8 / len(metrics["models"])
    for k, (label, m) in enumerate(metrics["models"].items()):
        ax.bar(
            np.arange(len(langs)) + k * width, [m["bits_per_byte"].get(x, np.nan) for x in langs], width, label=label
        )
    ax.set_xticks(np.arange(len(langs)) + width * (len(metrics["models"]) - 1) / 2, langs)
    ax.set_ylabel("bits per byte (valid)")
    ax.set_title("Bits per byte per language (lower is better)")
    ax.legend()
    _png(aside, "bits_per_byte.png", fig)
    plt.close(fig)
    names.append("bits_per_byte.png")

    for s, r in metrics["retrieval"].items():
        if not r.get("acc_at_1"):
            continue
        set_langs = sorted({x for k in r["acc_at_1"] for x in k.split("-")})
        grid = np.full((len(set_langs), len(set_langs)), np.nan)
        for k, d in r["directions"].items():
            a, b = k.split("-")
            grid[set_langs.index(a), set_langs.index(b)] = d["forward"]
            grid[set_langs.index(b), set_langs.index(a)] = d["backward"]
        fig, ax = plt.subplots(figsize=(2.5 + 0.6 * len(set_langs), 1.2 + 0.6 * len(set_langs)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(set_langs)), set_langs)
        ax.set_yticks(range(len(set_langs)), set_langs)
        for i in range(len(set_langs)):
            for j in range(len(set_langs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xlabel("retrieved in")
        ax.set_ylabel("query in")
        ax.set_title(f"{s}: acc@1, layer {r['best_layer']}\n(chance {r['chance']:.3f})", fontsize=9)
        fig.colorbar(im, ax=ax)
        _png(aside, f"retrieval_{s}.png", fig)
        plt.close(fig)
        names.append(f"retrieval_{s}.png")

    if train_rows:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        rows = [r for r in train_rows if "loss" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train", color="k")
        valid = [r for r in train_rows if "valid_loss" in r]
        if valid:
            mean = [float(np.mean(list(r["valid_loss"].values()))) for r in valid]
            ax.plot([r["step"] for r in valid], mean, "o-", label="valid (mean over languages)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title("Training loss")
        ax.legend()
        _png(aside, "loss_curves.png", fig)
        plt.close(fig)
        names.append("loss_curves.png")

    tok = metrics["tokenizer"]
    if tok:
        tl = sorted(tok)
        fig, ax = plt.subplots(figsize=(max(6, len(tl) * 0.45), 3.5))
        ax.bar(tl, [tok[x].get("fertility") or 0 for x in tl])
        ax.set_ylabel("tokens per word (zh/ja: per character)")
        ax.set_title("Tokenizer fertility per language")
        _png(aside, "fertility.png", fig)
        plt.close(fig)
        names.append("fertility.png")

    with aside.path("report.md").open("wb") as f:
        f.write(markdown(metrics, names).encode())
    return names


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(metrics: dict, images: list[str] | None = None) -> str:
    """The report: tables of every measure, the plots, generated and translated texts."""
    models = list(metrics["models"])
    lines = ["# Evaluation", ""]
    lines += [f"Models: {', '.join(models)}. Lower bits per byte is better; accuracies are beside chance.", ""]
    lines += _bits_per_byte_section(metrics, models)
    for m in models:
        mm = metrics["models"][m]
        lines += ["", f"## Cross-lingual retrieval ({m})", ""]
        lines += _retrieval_section(mm) + _transfer_section(mm) + _translation_section(mm)
        lines += _contamination_section(mm) + _generations_section(m, mm)
    if "comparison" in metrics:
        lines += ["", "## Comparison", "", "```json", json.dumps(metrics["comparison"], indent=1)[:4000], "```"]
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in images or []]
    return "\n".join(lines) + "\n"


def _bits_per_byte_section(metrics: dict, models: list[str]) -> list[str]:
    """Bits per byte, token perplexity and generation per language and model, beside the tokenizer's figures."""
    lines = [
        "## Bits per byte and generation",
        "",
        "| language | "
        + " | ".join(f"{m} BPB | {m} token ppl | {m} generation in-language" for m in models)
        + " | fertility | token premium |",
        "|---" * (1 + 3 * len(models) + 2) + "|",
    ]
    for lang in sorted(metrics["bits_per_byte"]):
        cells = []
        for m in models:
            mm = metrics["models"][m]
            cells += [
                _f(mm.get("bits_per_byte", {}).get(lang)),
                _f(mm.get("token_perplexity", {}).get(lang), 1),
                _f(mm.get("generation_language_rate", {}).get(lang), 2),
            ]
        t = metrics["tokenizer"].get(lang, {})
        lines.append(
            f"| {lang} | " + " | ".join(cells) + f" | {_f(t.get('fertility'), 2)} | "
            f"{_f(t.get('token_premium'), 2) if t.get('token_premium') else 'n/a (pivot or no set)'} |"
        )
    return lines


def _retrieval_section(mm: dict) -> list[str]:
    """One model's retrieval per parallel set: the best layer, every layer's mean, acc@1 per pair."""
    lines = []
    for s, r in mm["retrieval"].items():
        if not r.get("acc_at_1"):
            lines.append(f"- {s}: no language pair with two usable rows")
            continue
        lines += [
            f"**{s}**: best layer {r['best_layer']} of {len(r['per_layer_mean']) - 1}, mean acc@1 "
            f"{r['mean_acc_at_1']:.3f} vs chance {r['chance']:.3f} ({r['pairs']} pairs). Per layer: "
            + ", ".join(f"{x:.3f}" for x in r["per_layer_mean"]),
            "",
            "| pair | acc@1 | rows | dropped: empty / identical / wrong language |",
            "|---|---|---|---|",
        ]
        for k, v in sorted(r["acc_at_1"].items()):
            d = r["dropped"][k]
            lines.append(
                f"| {k} | {v:.3f} | {r['rows'][k]} | {d['empty']} / {d['identical']} / {d['wrong_language']} |"
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
            f"**Transfer probe on {s}** (logistic regression on English layer-{t['layer']} features of "
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
    """One model's few-shot translation per parallel set: chrF++ and BLEU per pair, an example or two."""
    lines = []
    for s, tr in mm["translation"].items():
        lines += [
            f"**Translation on {s}** (few-shot; prompt: `{tr['prompt_format']}`): chrF++ "
            + ", ".join(f"{k.split('/')[1]} {v:.1f}" for k, v in mm["chrf"].items() if k.startswith(s + "/"))
            + "; BLEU "
            + ", ".join(f"{k.split('/')[1]} {v:.1f}" for k, v in mm["bleu"].items() if k.startswith(s + "/")),
            "",
        ]
        for pair, ex in list(tr["examples"].items())[:2]:
            for e in ex[:1]:
                lines += [
                    f"- {pair}: {_code(e['source'])} -> {_code(e['hypothesis'])} (reference {_code(e['reference'])})"
                ]
        lines.append("")
    return lines


def _contamination_section(mm: dict) -> list[str]:
    """One model's contamination: per parallel set, each language's share of segments seen in training."""
    lines = ["**Contamination** (segments sharing an n-gram with the train shards):", ""]
    for s, c in mm["contamination"].items():
        lines.append(
            f"- {s} ({c['ngram']}-grams): "
            + ", ".join(f"{lang} {v['share']:.3f}" for lang, v in sorted(c["per_language"].items()))
        )
    return lines


def _generations_section(m: str, mm: dict) -> list[str]:
    """Model ``m``'s greedy and sampled continuation of its first prompt per language."""
    lines = ["", f"**Generations** ({m}; first prompt per language):", ""]
    for lang, gens in sorted(mm.get("generations", {}).items()):
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
