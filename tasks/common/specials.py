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
