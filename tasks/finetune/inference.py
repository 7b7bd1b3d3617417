"""The fine-tuned models at work: ``xlmflow translate`` and ``xlmflow classify`` (lines in, one answer per line out).

Translation prompts as fine-tuning taught (:mod:`.data`): ``<lang:src> line <|endoftext|> <lang:tgt>``, then greedy
decoding (or beam search) until ``<|endoftext|>``. Classification reads ``<lang:xx> line <|endoftext|>`` as the
classifier was trained. Lines go in batches of similar length; an empty line gets an empty answer, so the output has
as many lines as the input.
"""

from __future__ import annotations

import json

from xlmflow.storage import Location
from xlmflow.tasks.common.specials import EOS, PAD, TOKENIZER_FILE, lang_tag


def load(model_dir: str, classifier: bool = False):
    """(model, tokenizer) of a model folder (a language model, or with ``classifier`` a sequence classifier), with
    errors that say what is missing and what to do."""
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
    if classifier and "id2label" not in json.loads(loc.child("config.json").open("rb").read()):
        raise ValueError(
            f"{model_dir}: not a classifier (its config.json has no labels); give <run>/finetune/classify-<set>"
        )
    auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(loc.path, use_safetensors=True)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, Tokenizer.from_file(loc.child(TOKENIZER_FILE).path)


def translate_lines(
    model, tok, lines: list[str], src: str, tgt: str, beams: int = 1, max_new_tokens: int = 64, batch_size: int = 32
) -> list[str]:
    """One translation per line (an empty line: an empty translation)."""
    from xlmflow.tasks.common.generation import translate

    langs = list(model.config.langs or [])
    for role, lang in (("source", src), ("target", tgt)):
        if lang not in langs:
            raise ValueError(f"unknown {role} language {lang!r}: this model knows {', '.join(langs)}")
    if src == tgt:
        raise ValueError(f"source and target are both {src!r}")
    todo = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    if todo:
        hyps, _ = translate(
            model, tok, [], [lines[i].strip() for i in todo], src, tgt, max_new_tokens, batch_size, beams=beams
        )
        for i, h in zip(todo, hyps):
            out[i] = " ".join(h.split())  # one line per line, whatever the model emitted
    return out


def classify_lines(model, tok, lines: list[str], lang: str, batch_size: int = 32) -> list[str]:
    """One class name per line (an empty line: an empty answer)."""
    langs = list(model.config.langs or [])
    if lang not in langs:
        raise ValueError(f"unknown language {lang!r}: this model knows {', '.join(langs)}")
    todo = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    for i, label in zip(todo, classify(model, tok, [lines[i].strip() for i in todo], lang, batch_size)):
        out[i] = label
    return out


def classify(model, tok, texts: list[str], lang: str, batch_size: int = 32) -> list[str]:
    """The class name of each text, read as the classifier was trained: ``<lang:xx> text <|endoftext|>``,
    right-padded with ``<pad>`` (the classifier reads each row's last real token)."""
    import torch

    tag, eos, pad = tok.token_to_id(lang_tag(lang)), tok.token_to_id(EOS), tok.token_to_id(PAD)
    room = model.config.n_positions - 2
    ids = [[tag, *e.ids[:room], eos] for e in tok.encode_batch(texts, add_special_tokens=False)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    with torch.no_grad():
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in rows], device=model.device)
            for i, k in zip(rows, model(input_ids=batch).logits.argmax(-1).tolist()):
                out[i] = model.config.id2label[k]
    return out
