"""What helps cross-lingual transfer here: train and evaluate one cell per setting and print a table.

Cells change one thing at a time from the configured training (``--base``: the demo's unless a TOML file says
otherwise): the aligned vocabulary ``none`` / ``init`` / ``tie``, language embeddings on / off, translation-pair
blocks at the default share / 0. Each cell is a run directory that hard-links the data stages of ``--run-dir``
(command A's ``runs/demo``, or any run whose data stages are committed: nothing there is rewritten, every stage
commits new files) and runs ``xlmflow run --only train --only evaluate`` with its flags, so a cell trains and is
measured exactly as a user's run is. Per cell, from ``evaluate/metrics.json``: mean bits per byte over the
languages (and how many are below their unigram baseline), per parallel set the chosen layer's retrieval acc@1 beside
the bag-of-token-ids and char 3-gram baselines, the mean chrF++ of the translation probe beside copying the
source, and the greedy generations of the 7 core languages that are degenerate (no letter, or distinct-2 < 0.5).

    python bench/ablate.py --run-dir runs/demo [--cells base align-none ...] [--work /tmp/xlmflow-ablate]
        [--config FILE] [--out bench/ablate.json] [--plot bench/ablate.png]

A cell already evaluated in ``--work`` is not run again (its stages are current), so an interrupted ablation goes
on where it stopped. ``--config`` (e.g. the reference recipe's TOML file) sets the training every cell starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA_STAGES = ("ingest", "langid", "vocab", "shard")
CORE = ("en", "fr", "de", "es", "zh", "ru", "ar")  # the issue's 7 core languages: the greedy generations counted
#: cell -> the train flags that make it (one change from the base each)
CELLS: dict[str, list[str]] = {
    "base": [],  # align init, language embeddings on, pair share = the preset's
    "align-none": ["--align", "none"],
    "align-tie": ["--align", "tie"],
    "no-lang-emb": ["--no-lang-embeddings"],
    "no-pairs": ["--parallel-share", "0"],
}


def link_data(src: Path, dst: Path) -> None:
    """The data stages of ``src`` in ``dst`` as hard links (and the recorded configuration, copied)."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in DATA_STAGES:
        if not (dst / stage).exists():
            subprocess.run(["cp", "-al", str(src / stage), str(dst / stage)], check=True)
    for name in os.listdir(src):
        if name.endswith(".json") or name.endswith(".toml"):  # the run's recorded configuration
            (dst / name).write_bytes((src / name).read_bytes())


def run_cell(src: Path, work: Path, cell: str, config: str | None) -> dict:
    dst = work / cell
    link_data(src, dst)
    cmd = [sys.executable, "-m", "xlmflow.flows.cli", "run", "--quiet", "--run-dir", str(dst)]
    cmd += ["--only", "train", "--only", "evaluate", *(["--config", config] if config else []), *CELLS[cell]]
    t0 = time.monotonic()
    log = dst / "ablate.log"  # a file, not a pipe: a process the run leaves behind cannot hold this one up
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"cell {cell} failed (exit {code}):\n{log.read_text()[-3000:]}")
    wall = time.monotonic() - t0
    return summarise(cell, json.loads((dst / "evaluate" / "metrics.json").read_text()), wall)


def summarise(cell: str, m: dict, wall: float) -> dict:
    bpb = m["bits_per_byte"]
    row = {
        "cell": cell,
        "flags": " ".join(CELLS[cell]) or "(base)",
        "wall_s": round(wall, 1),
        "mean_bpb": round(float(np.mean(list(bpb.values()))), 3),
        "below_unigram": f"{sum(bool(v) for v in m['beats_unigram'].values())}/{len(bpb)}",
        "sets": {},
        "greedy_degenerate": greedy_degenerate(m),
    }
    for name, r in m.get("retrieval", {}).items():
        if r.get("acc_at_1") is None:
            continue
        pairs = {k: v for k, v in m.get("translation", {}).get(name, {}).items() if isinstance(v, dict) and "chrf" in v}
        chrf = [p["chrf"] for p in pairs.values()]
        copy = [p["copy_baseline"]["chrf"] for p in pairs.values()]
        row["sets"][name] = {
            "acc_at_1": round(r["acc_at_1"], 3),
            "bag_of_tokens": round(r["baselines"]["bag_of_tokens"], 3),
            "char3_tfidf": round(r["baselines"]["char3_tfidf"], 3),
            "layer": f"{r['layer']}{' centred' if r['centred'] else ''}",
            "chrf": round(float(np.mean(chrf)), 1) if chrf else None,
            "copy_chrf": round(float(np.mean(copy)), 1) if copy else None,
        }
    return row


def greedy_degenerate(m: dict) -> dict[str, str]:
    """Per core language, the report's greedy generations that are degenerate, as "k/n"."""
    from xlmflow.tasks.evaluate.scores import degenerate

    out = {}
    for lang in CORE:
        greedy = [g["greedy"] for g in m.get("generations", {}).get(lang, [])]
        if greedy:
            out[lang] = f"{int(degenerate(greedy).sum())}/{len(greedy)}"
    return out


def table(rows: list[dict]) -> str:
    sets = sorted({s for r in rows for s in r["sets"]})
    head = "| cell | flags | train + evaluate (s) | mean bits/byte | below unigram |"
    head += "".join(f" {s}: acc@1 (layer) / bag / char3 | {s}: chrF++ / copy |" for s in sets)
    n = next((v.split("/")[1] for r in rows for v in r.get("greedy_degenerate", {}).values()), "?")
    head += f" greedy degenerate of {n}, " + " / ".join(CORE) + " |"
    lines = [head, "|" + "---|" * (6 + 2 * len(sets))]
    for r in rows:
        line = f"| {r['cell']} | `{r['flags']}` | {r['wall_s']:.0f} | {r['mean_bpb']:.3f} | {r['below_unigram']} |"
        for s in sets:
            c = r["sets"].get(s)
            line += (
                f" {c['acc_at_1']:.3f} ({c['layer']}) / {c['bag_of_tokens']:.3f} / {c['char3_tfidf']:.3f} |"
                f" {c['chrf']} / {c['copy_chrf']} |"
                if c
                else " - | - |"
            )
        g = r.get("greedy_degenerate", {})
        line += " " + " / ".join(g.get(lang, "-").split("/")[0] for lang in CORE) + " |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({s for r in rows for s in r["sets"]})
    fig, axes = plt.subplots(1, 1 + len(sets), figsize=(4 + 4 * len(sets), 3.2))
    names = [r["cell"] for r in rows]
    axes[0].barh(names, [r["mean_bpb"] for r in rows], color="#4c72b0")
    axes[0].set_xlabel("mean bits per byte (lower is better)")
    for ax, s in zip(axes[1:], sets):
        acc = [r["sets"].get(s, {}).get("acc_at_1", 0) for r in rows]
        bag = [r["sets"].get(s, {}).get("bag_of_tokens", 0) for r in rows]
        ax.barh(names, acc, color="#dd8452", label="model acc@1")
        ax.scatter(bag, names, color="black", marker="|", s=200, label="bag of token ids")
        ax.set_xlabel(f"{s}: retrieval acc@1")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="a run whose data stages (ingest..shard) are committed")
    ap.add_argument("--cells", nargs="*", default=list(CELLS))
    ap.add_argument("--work", default="/tmp/xlmflow-ablate")
    ap.add_argument("--config", help="a TOML file: the training every cell starts from")
    ap.add_argument("--out", default="bench/ablate.json")
    ap.add_argument("--plot", default="bench/ablate.png")
    a = ap.parse_args()
    rows = []
    for cell in a.cells:
        rows.append(run_cell(Path(a.run_dir), Path(a.work), cell, a.config))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    plot(rows, a.plot)
    print(table(rows))


if __name__ == "__main__":
    main()
