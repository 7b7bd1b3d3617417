"""The evaluation's PNG plots (matplotlib, Agg, no timestamps in the files): bits per byte per language and
model, a retrieval heat map per parallel set, retrieval per layer beside the baselines, the training loss and the
tokenizer's fertility. Files of the stage's output, named in ``report.md``."""

from __future__ import annotations

import io

import numpy as np

from xlmflow.storage import Aside
from xlmflow.tasks.evaluate.report_md import layer_choice


def write_plots(aside: Aside, metrics: dict, train_rows: list[dict]) -> list[str]:
    """Every plot into the stage's aside folder; their file names, in the order report.md shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_bits_per_byte_plot(aside, plt, metrics)]
    names += [_heat_map(aside, plt, s, r) for s, r in metrics["retrieval"].items() if r.get("pairs")]
    names += [
        _layers_plot(aside, plt, metrics, s)
        for s in sorted({s for m in metrics["models"].values() for s in m["retrieval"]})
    ]
    if train_rows:
        names.append(_loss_plot(aside, plt, train_rows))
    if metrics["tokenizer"]:
        names.append(_fertility_plot(aside, plt, metrics["tokenizer"]))
    return [n for n in names if n]


def _bits_per_byte_plot(aside: Aside, plt, metrics: dict) -> str:
    """Bits per byte per language, a bar per model."""
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
    return _png(aside, "bits_per_byte.png", fig)


def _heat_map(aside: Aside, plt, s: str, r: dict) -> str:
    """The first model's acc@1 on set ``s`` per query language and retrieved language, at the chosen layer."""
    set_langs = sorted({x for k in r["pairs"] for x in k.split("-")})
    grid = np.full((len(set_langs), len(set_langs)), np.nan)
    for k, d in r["pairs"].items():
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
    ax.set_title(f"{s}: acc@1, {layer_choice(r)}\n(chance {r['chance']:.3f})", fontsize=9)
    fig.colorbar(im, ax=ax)
    return _png(aside, f"retrieval_{s}.png", fig)


def _layers_plot(aside: Aside, plt, metrics: dict, s: str) -> str | None:
    """acc@1 on a set's eval part per layer, raw and centred, per model, beside the baselines and chance; the
    chosen layer marked (it was chosen on the train part, so it need not be the peak of these curves)."""
    runs = [
        (label, m["retrieval"][s]) for label, m in metrics["models"].items() if m["retrieval"].get(s, {}).get("pairs")
    ]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for k, (label, r) in enumerate(runs):
        colour = f"C{k}"
        for kind, style in (("raw", "-"), ("centred", "--")):
            ys = r["per_layer"][kind]
            ax.plot(range(len(ys)), ys, style, color=colour, marker=".", label=f"{label} {kind}")
        chosen = r["per_layer"]["centred" if r["centred"] else "raw"][r["layer"]]
        ax.plot([r["layer"]], [chosen], "o", ms=10, mfc="none", color=colour, label=f"{label}: chosen layer")
        ax.axhline(r["baselines"]["bag_of_tokens"], color=colour, ls=":", label=f"{label} tokenizer: bag of tokens")
    first = runs[0][1]
    ax.axhline(first["baselines"]["char3_tfidf"], color="k", ls="-.", lw=1, label="char 3-gram TF-IDF")
    ax.axhline(first["chance"], color="grey", lw=1, label="chance")
    ax.set_xticks(range(len(first["per_layer"]["raw"])))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("acc@1 (eval part, mean over pairs)")
    ax.set_title(f"{s}: translation retrieval per layer")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return _png(aside, f"retrieval_layers_{s}.png", fig)


def _loss_plot(aside: Aside, plt, train_rows: list[dict]) -> str:
    """The train stage's loss per step, and the mean validation loss over languages where it was measured."""
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
    return _png(aside, "loss_curves.png", fig)


def _fertility_plot(aside: Aside, plt, tok: dict) -> str:
    """The vocab stage's tokens per word (per character in zh/ja) per language."""
    tl = sorted(tok)
    fig, ax = plt.subplots(figsize=(max(6, len(tl) * 0.45), 3.5))
    ax.bar(tl, [tok[x].get("fertility") or 0 for x in tl])
    ax.set_ylabel("tokens per word (zh/ja: per character)")
    ax.set_title("Tokenizer fertility per language")
    return _png(aside, "fertility.png", fig)


def _png(aside: Aside, name: str, fig) -> str:
    """Write ``fig`` as ``name`` (no timestamp in the file, so the same figure gives the same bytes), close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    with aside.path(name).open("wb") as f:
        f.write(buf.getvalue())
    return name
