"""``xlmflow translate``: lines in, one translation per line out, with a fine-tuned model folder.

The prompt is the one fine-tuning taught (:mod:`.data`): ``<lang:src> line <|endoftext|> <lang:tgt>``, then greedy
decoding (or beam search) until ``<|endoftext|>``. Lines are translated in batches of similar length; an empty line
stays empty, so the output has as many lines as the input.
"""

from __future__ import annotations

from xlmflow.storage import Location
from xlmflow.tasks.common.specials import TOKENIZER_FILE


def load(model_dir: str):
    """(model, tokenizer) of a model folder, with errors that say what is missing and what to do."""
    loc = Location.of(model_dir)
    if not loc.child("config.json").exists():
        raise ValueError(
            f"{model_dir}: no config.json, so not a model folder; give a fine-tuned model, such as "
            "<run>/finetune/translate (xlmflow finetune --run-dir <run> makes it)"
        )
    if not loc.child(TOKENIZER_FILE).exists():
        raise ValueError(
            f"{model_dir}: no {TOKENIZER_FILE} beside the model; copy the run's vocab/{TOKENIZER_FILE} there"
        )
    import torch
    import transformers
    from tokenizers import Tokenizer

    from xlmflow.tasks.common.model import register

    register()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(loc.path, use_safetensors=True)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, Tokenizer.from_file(loc.child(TOKENIZER_FILE).path)


def translate_lines(
    model, tok, lines: list[str], src: str, tgt: str, beams: int = 1, max_new_tokens: int = 64, batch_size: int = 32
) -> list[str]:
    """One translation per line (an empty line: an empty translation)."""
    from xlmflow.tasks.evaluate import measures

    langs = list(model.config.langs or [])
    for role, lang in (("source", src), ("target", tgt)):
        if lang not in langs:
            raise ValueError(f"unknown {role} language {lang!r}: this model knows {', '.join(langs)}")
    if src == tgt:
        raise ValueError(f"source and target are both {src!r}")
    todo = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    if todo:
        hyps, _ = measures.translate(
            model, tok, [], [lines[i].strip() for i in todo], src, tgt, max_new_tokens, batch_size, beams=beams
        )
        for i, h in zip(todo, hyps):
            out[i] = " ".join(h.split())  # one line per line, whatever the model emitted
    return out
