"""Generation shared by evaluation and the fine-tuned models: continuing a batch of prompts, and translating with the
training format's prompt (few-shot for a pretrained model, zero-shot for a fine-tuned one)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from xlmflow.tasks.common.specials import EOS, PAD, lang_tag


@torch.no_grad()
def continue_prompts(model, tok: Tokenizer, prompts: list[list[int]], max_new_tokens: int, **kwargs) -> list[str]:
    """Decoded new tokens of a batch of prompts, each up to its EOS, special tokens skipped; with the model's own
    generation config (it suppresses tags); no more new tokens than the context has room for after the longest
    prompt (GPT-2 has no positions beyond it). Shorter prompts are padded on the left and masked: generate then
    derives each row's positions from the mask, so a row continues as it would alone."""
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    new = min(max_new_tokens, model.config.n_positions - width)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad, **kwargs)
    rows = [row[: row.index(eos)] if eos in row else row for row in out[:, width:].tolist()]
    return tok.decode_batch(rows, skip_special_tokens=True)


def translate(
    model,
    tok: Tokenizer,
    shots: list[tuple[str, str]],
    sources: list[str],
    src: str,
    tgt: str,
    max_new_tokens: int = 64,
    batch_size: int = 1,
    beams: int = 1,
) -> tuple[list[str], str]:
    """Few-shot translation prompted in the training format, so an untuned LM can be asked at all (with no
    ``shots``: the prompt a fine-tuned model learnt, ``<lang:src> source <|endoftext|> <lang:tgt>``).

    Each pair is two documents in a row, source then target; the prompt ends with the target tag, and greedy
    generation (``beams`` > 1: beam search) stops at EOS. Too long a prompt loses its oldest shots first, then the
    start of the source (keeping its tag). Languages are derived by the model from the tags. ``batch_size``
    prompts are generated at once (left-padded, :func:`continue_prompts`), in order of length so that little is padding.
    """
    model.eval()
    eos = tok.token_to_id(EOS)
    src_tag, tgt_tag = tok.token_to_id(lang_tag(src)), tok.token_to_id(lang_tag(tgt))
    pairs = [[e.ids for e in tok.encode_batch(list(pair), add_special_tokens=False)] for pair in shots]
    shot_ids = [[src_tag, *s, eos, tgt_tag, *t, eos] for s, t in pairs]
    budget = max(model.config.n_positions - max_new_tokens, model.config.n_positions // 2)  # room for the answer
    prompts, kept = [], []
    for source in tok.encode_batch(sources, add_special_tokens=False):
        query = [src_tag, *source.ids, eos, tgt_tag]
        first = 0
        while first < len(shot_ids) and sum(map(len, shot_ids[first:])) + len(query) > budget:
            first += 1
        if len(query) > budget:
            query = [src_tag, *query[len(query) - budget + 1 :]]
        prompts.append([t for shot in shot_ids[first:] for t in shot] + query)
        kept.append(len(shot_ids) - first)
    hyps = [""] * len(prompts)
    room = {i: min(max_new_tokens, model.config.n_positions - len(p)) for i, p in enumerate(prompts)}
    order = sorted(range(len(prompts)), key=lambda i: (-room[i], len(prompts[i])))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    for rows in [[i for i in b if room[i] == r] for b in batches for r in sorted({room[i] for i in b})]:
        # a batch shares its room for new tokens: rows with less room (long prompts) go apart, as they would alone
        more = {"num_beams": beams} if beams > 1 else {}
        texts = continue_prompts(model, tok, [prompts[i] for i in rows], max_new_tokens, do_sample=False, **more)
        for i, text in zip(rows, texts):
            hyps[i] = text.strip()
    s, t = lang_tag(src), lang_tag(tgt)
    n = "-".join(map(str, sorted({min(kept), max(kept)}))) if kept else str(len(shots))  # shots kept: "2" or "1-3"
    search = f"beam search ({beams} beams)" if beams > 1 else "greedy"
    shown = f"{s}{{source}}{EOS}{t}{{translation}}{EOS} x{n}, then " if shots else ""
    fmt = f"{shown}{s}{{source}}{EOS}{t} -> {search} until {EOS}"
    return hyps, fmt
