"""How much of the validation split the translation-pair blocks hold: per language, the share of the validation
documents' word 8-grams (12-character windows for zh and ja, which have no spaces) that occur in a usable pair side
of the shard stage's ``shard/pairs/`` (a side training can draw). Independent of the shard stage's own rule (text
units, 11 of them), so it checks that rule from outside.

    python bench/pairs_vs_valid.py --run-dir runs/demo [--langs en fr de es zh ru ar]

At d3ebd6e, before the pairs held the validation split out, command A's run gave 87.7-100% in the 7 core languages;
since 5a31476, 0.0% (zh 3.8%): bench/RESULTS.md, "The pair stream held the validation split's text".
"""

from __future__ import annotations

import argparse
import re

from xlmflow.storage import Location, RunDir, read_table
from xlmflow.storage.shards import list_pairs
from xlmflow.tasks.evaluate.units import valid_docs
from xlmflow.tasks.shard.encode import load_tokenizer

UNSPACED = ("zh", "ja")


def grams(text: str, lang: str) -> set[str]:
    if lang in UNSPACED:
        s = re.sub(r"\s+", "", text)
        return {s[i : i + 12] for i in range(len(s) - 11)}
    w = text.split()
    return {" ".join(w[i : i + 8]) for i in range(len(w) - 7)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--langs", nargs="*", default=["en", "fr", "de", "es", "zh", "ru", "ar"])
    a = ap.parse_args()
    run = RunDir.of(a.run_dir)
    tok = load_tokenizer(run.stage("vocab"))
    drawn: dict[str, set[str]] = {}
    for pairs in list_pairs(run.stage("shard")):
        table = read_table(Location(pairs.uri)).to_pydict()
        for lang in (k[3:] for k in table if k.startswith("ok_")):
            for ids, ok in zip(table[lang], table[f"ok_{lang}"]):
                if ok:
                    drawn.setdefault(lang, set()).update(grams(tok.decode(ids), lang))
    for lang in a.langs:
        docs = valid_docs(run.stage("shard").uri, lang, 10**9)
        shared = total = touched = 0
        for d in docs:
            g = grams(tok.decode(d.tolist(), skip_special_tokens=True), lang)
            hit = len(g & drawn.get(lang, set()))
            shared, total, touched = shared + hit, total + len(g), touched + (hit > 0)
        print(
            f"{lang}: {len(docs)} validation documents, {touched} share an n-gram with a pair side; "
            f"n-grams {shared}/{total} = {shared / max(total, 1):.1%}"
        )


if __name__ == "__main__":
    main()
