"""decode(encode(x)) == NFC(x) for every clean document of a run, through AutoTokenizer.

    python bench/check_roundtrip.py [--run-dir runs/demo]

Reads every ``langid/clean/lang=xx`` partition in record batches, encodes with the
vocab stage's tokenizer (``encode_batch`` of the fast tokenizer), decodes, and counts
the documents whose round trip differs from their NFC text (printing the first few).
"""

from __future__ import annotations

import argparse
import unicodedata

from transformers import AutoTokenizer

from xlmflow.storage import RunDir, load_output, partitions, read_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/demo")
    args = ap.parse_args()
    run = RunDir.of(args.run_dir)
    tok = AutoTokenizer.from_pretrained(run.stage("vocab").uri)
    langid = run.stage("langid")
    total = bad = 0
    for lang, files in partitions(load_output(langid, "langid"), "clean").items():
        for f in files:
            for batch in read_batches(langid.child(f.path), ["text"]):
                texts = batch.column(0).to_pylist()
                ids = tok(texts, add_special_tokens=False)["input_ids"]
                for text, back in zip(texts, tok.batch_decode(ids, clean_up_tokenization_spaces=False)):
                    if back != unicodedata.normalize("NFC", text):
                        bad += 1
                        if bad <= 5:
                            print(f"MISMATCH [{lang}] {text[:80]!r} -> {back[:80]!r}")
                total += len(texts)
    print(f"round trip: {total - bad} of {total} clean documents identical, {bad} differ")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
