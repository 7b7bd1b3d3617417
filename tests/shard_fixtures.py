"""Inputs for shard-stage tests: a committed langid stage and a tiny byte-level BPE vocab stage."""

from __future__ import annotations

import random

from helpers import write_langid_stage

WORDS = {
    "en": "the cat sat on a mat and the dog ran far away from home".split(),
    "fr": "le chat est sur le tapis et le chien court loin de la maison".split(),
    "zh": list("我们的猫坐在垫子上狗跑得很远离开了家"),
}


def texts(lang: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"{lang}-{seed}")
    sep = "" if lang == "zh" else " "
    return [sep.join(rng.choices(WORDS[lang], k=rng.randint(3, 40))) for _ in range(n)]


def corpus(sizes: dict[str, int]) -> dict[str, list[str]]:
    return {lang: texts(lang, n) for lang, n in sizes.items()}


def train_tokenizer(docs: dict[str, list[str]], vocab_size: int = 400, tag_langs: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    langs = sorted(docs if tag_langs is None else tag_langs)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=["<|endoftext|>", "<pad>"] + [f"<lang:{lang}>" for lang in langs],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([t for lang in sorted(docs) for t in docs[lang]], trainer=trainer)
    return tok, langs


def write_vocab_stage(run_dir: str, tok, langs: list[str]):
    """A committed ``vocab`` stage: tokenizer.json in the stage folder, stats languages and vocab_size."""
    from xlmflow.storage import RunDir
    from xlmflow.tasks.common.runtime import Unit, ensure

    run = RunDir.of(run_dir)
    data = tok.to_str().encode()

    def build(aside):
        with aside.path("tokenizer.json").open("wb") as f:
            f.write(data)
        return {"languages": langs, "vocab_size": tok.get_vocab_size()}

    unit = Unit(
        stage="vocab",
        name="_stage",
        out=run.stage("vocab").uri,
        code_version="test",
        params={"tokenizer": tok.to_str()},
    )
    return ensure(unit, build)


def make_inputs(run_dir: str, docs: dict[str, list[str]], vocab_size: int = 400, tag_langs: list[str] | None = None):
    write_langid_stage(run_dir, docs)
    tok, langs = train_tokenizer(docs, vocab_size, tag_langs)
    write_vocab_stage(run_dir, tok, langs)
    return tok


TAGS = ["<lang:en>", "<lang:fr>"]
SENTENCES = [
    "the cat sat on a mat and the dog ran far away from home",
    "le chat est sur le tapis et le chien court loin de la maison",
] * 4


def tiny_tokenizer():
    """A 300-id byte-level BPE with the specials and en/fr tags, for model-level tests."""
    raw, _ = train_tokenizer({"en": SENTENCES[::2], "fr": SENTENCES[1::2]}, vocab_size=300)
    return raw
