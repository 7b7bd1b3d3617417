"""The model of a training spec: GPT-2 sized by the preset and overrides, with the language tags of the vocab
stage's tokenizer and its alignment table (``init``: aligned rows copied; ``tie``: aligned rows shared)."""

from __future__ import annotations

import numpy as np

from xlmflow.storage import Location, read_table
from xlmflow.tasks.common.specials import EOS, PAD, TOKENIZER_FILE, lang_tag


def build_model(spec: dict):
    """The model of the spec: GPT-2 sized by the preset/overrides, language tags, alignment mode."""
    from tokenizers import Tokenizer

    from xlmflow.tasks.common.model import XlmGPT2Config, XlmGPT2LMHeadModel

    with Location(spec["vocab"]).child(TOKENIZER_FILE).open("rb") as f:
        tok = Tokenizer.from_str(f.read().decode("utf-8"))
    tag_ids = [tok.token_to_id(lang_tag(lang)) for lang in spec["langs"]]
    if None in tag_ids:
        raise ValueError(f"{spec['vocab']}: the tokenizer has no tag for {spec['langs'][tag_ids.index(None)]!r}")
    anchors = None
    if spec["align"] != "none":  # init copies rows from anchors; tie shares rows across languages only
        column = "tie_id" if spec["align"] == "tie" else "anchor_id"
        table = read_table(Location(spec["alignment"]), ["token_id", column])
        anchors = np.arange(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
        anchors[table.column("token_id").to_numpy()] = table.column(column).to_numpy()
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    config = XlmGPT2Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        lang_token_ids=tag_ids,
        langs=spec["langs"],
        anchor_ids=anchors.tolist() if spec["align"] == "tie" else None,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        use_lang_embeddings=spec["train"].get("lang_embeddings", True),
        **spec["model"],
    )
    model = XlmGPT2LMHeadModel(config)
    if spec["align"] == "init":
        model.init_aligned(anchors.tolist())
    return model
