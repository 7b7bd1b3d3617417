"""The tokens the vocab stage defines and the shard (and later, training) stages rely on.

One small module so the contract lives in one place without making a consumer's
fingerprint depend on the vocab stage's code.
"""

EOS = "<|endoftext|>"  # end of text, also used as beginning of text
PAD = "<pad>"
TOKENIZER_FILE = "tokenizer.json"


def lang_tag(lang: str) -> str:
    """The special token that opens every document of ``lang`` (ISO 639-1): ``<lang:xx>``."""
    return f"<lang:{lang}>"


def untagged(clean: dict, tok) -> dict[str, int]:
    """Documents per language of ``clean`` (the langid stage's clean partitions: language -> file entries) that
    the tokenizer ``tok`` has no tag for: a language that came with new data after the vocabulary was frozen."""
    return {
        lang: sum(f.rows or 0 for f in files if f.path.endswith(".parquet"))
        for lang, files in clean.items()
        if tok.token_to_id(lang_tag(lang)) is None
    }
