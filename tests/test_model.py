"""Tests for the cross-lingual GPT-2 in tasks/model.py (tiny models, CPU only, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from shard_fixtures import TAGS, tiny_tokenizer

from xlmflow.tasks.common import model as M


@pytest.fixture(scope="module")
def tok():
    raw = tiny_tokenizer()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<pad>")


def tag_ids(tok) -> list[int]:
    return tok.convert_tokens_to_ids(TAGS)


def make_model(tok, anchor_ids=None, lang_scale: float = 1.0, seed: int = 0) -> M.XlmGPT2LMHeadModel:
    """A tiny model; ``lang_scale`` blows the language rows up so languages clearly steer the outputs."""
    torch.manual_seed(seed)
    cfg = M.XlmGPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        lang_token_ids=tag_ids(tok),
        langs=["en", "fr"],
        anchor_ids=anchor_ids,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = M.XlmGPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        model.lang_embeddings.weight.mul_(lang_scale)
    return model


def encode(tok, text: str) -> torch.Tensor:
    return tok(text, return_tensors="pt").input_ids


def test_loss_depends_on_language_ids(tok):
    model = make_model(tok)
    ids = encode(tok, "<lang:en> the cat sat on a mat")
    labels = M.labels_for(ids, tag_ids(tok))
    en = model(ids, labels=labels, lang_ids=torch.full_like(ids, 1)).loss
    fr = model(ids, labels=labels, lang_ids=torch.full_like(ids, 2)).loss
    derived = model(ids, labels=labels).loss  # the tag at position 0 makes every position English
    assert not torch.isclose(en, fr)
    assert torch.equal(derived, en)
    assert torch.all(model.lang_embeddings.weight[0] == 0)  # "no language yet" is neutral


def test_language_embeddings_off_is_plain_gpt2_and_saves_so(tok, tmp_path):
    """The ablation's switch: no language embedding module at all (DDP refuses parameters without gradients), the
    loss independent of the language ids, and a saved model loads with the switch as it was."""
    torch.manual_seed(0)
    cfg = M.XlmGPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2, lang_token_ids=tag_ids(tok),
        langs=["en", "fr"], use_lang_embeddings=False,
    )  # fmt: skip
    model = M.XlmGPT2LMHeadModel(cfg).eval()
    ids = encode(tok, "<lang:en> the cat sat on a mat")
    labels = M.labels_for(ids, tag_ids(tok))
    en = model(ids, labels=labels, lang_ids=torch.full_like(ids, 1)).loss
    assert model.lang_embeddings is None and torch.equal(
        en, model(ids, labels=labels, lang_ids=torch.full_like(ids, 2)).loss
    )
    model.save_pretrained(tmp_path)
    loaded = M.XlmGPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert loaded.lang_embeddings is None and torch.equal(en, loaded(ids, labels=labels).loss)


def test_forward_passes_parent_arguments_through(tok):
    model = make_model(tok, lang_scale=5.0)
    ids = encode(tok, "<lang:en> the cat <lang:fr> le chat")
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
        assert len(full.hidden_states) == model.config.n_layer + 1
        head = model(ids[:, :6], use_cache=True, attention_mask=torch.ones_like(ids[:, :6]))
        tail_lang = model.lang_ids_for(ids)[:, 6:]
        tail = model(ids[:, 6:], cache=head.cache, lang_ids=tail_lang, attention_mask=torch.ones_like(ids))
        assert torch.allclose(tail.logits, full.logits[:, 6:], atol=1e-5)
        head = model(ids[:, :6], use_cache=True)
        with pytest.warns(FutureWarning):  # the deprecated name still reaches the parent
            old = model(ids[:, 6:], past_key_values=head.cache, lang_ids=tail_lang)
        assert torch.allclose(old.logits, full.logits[:, 6:], atol=1e-5)
        assert isinstance(model(ids, return_dict=False), tuple)


def test_derived_language_ids(tok):
    model = make_model(tok)
    en, fr = tag_ids(tok)
    a, b, c = tok.convert_tokens_to_ids(["a", "b", "c"])
    ids = torch.tensor([[en, a, b, fr, c], [a, b, en, c, fr]])
    assert model.lang_ids_for(ids).tolist() == [[1, 1, 1, 2, 2], [0, 0, 1, 1, 2]]


def test_generation_uses_the_right_language(tok):
    from transformers import pipeline

    model = make_model(tok, lang_scale=5.0)
    ids = encode(tok, "<lang:fr> le chat")
    kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    kw |= {"output_logits": True, "return_dict_in_generate": True}
    derived = model.generate(ids, **kw)
    explicit_fr = model.generate(ids, lang_ids=torch.full_like(ids, 2), **kw)
    explicit_en = model.generate(ids, lang_ids=torch.full_like(ids, 1), **kw)
    # explicit lang_ids are extended with their last value: French at every step, like the tag says
    assert torch.equal(explicit_fr.sequences, derived.sequences)
    for fr_step, derived_step in zip(explicit_fr.logits, derived.logits, strict=True):
        assert torch.allclose(fr_step, derived_step, atol=1e-5)
    assert not torch.allclose(explicit_en.logits[-1], explicit_fr.logits[-1], atol=1e-3)  # language steers it

    generator = pipeline("text-generation", model=model, tokenizer=tok)
    piped = generator("<lang:fr> le chat", return_tensors=True, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert list(piped[0]["generated_token_ids"]) == explicit_fr.sequences[0].tolist()

    # A language switch inside the prompt: under the KV cache each step feeds one token, yet it must stay French.
    # Every step's logits must match a full recompute of the sequence so far without the cache.
    ids = encode(tok, "<lang:en> the cat <lang:fr> le")
    cached = model.generate(ids, **kw)
    banned = tag_ids(tok)
    for step, logits in enumerate(cached.logits):
        prefix = cached.sequences[:, : ids.shape[1] + step]
        with torch.no_grad():
            full = model(prefix, use_cache=False).logits[:, -1]
        assert torch.allclose(logits, full, atol=1e-5)
        full[:, banned] = float("-inf")
        assert full.argmax(-1).item() == cached.sequences[0, ids.shape[1] + step].item()


def test_generation_never_emits_tags(tok):
    model = make_model(tok)
    fr = tag_ids(tok)[1]
    with torch.no_grad():  # every final hidden state now points at the <lang:fr> output row
        wte = model.transformer.wte.weight
        wte[fr] *= 3
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(wte[fr] * 100)
    ids = encode(tok, "<lang:en> the cat")
    # (suppress_tokens=None would count as "unset" and fall back to the model's generation_config)
    sanity = model.generate(ids, suppress_tokens=[], max_new_tokens=4, do_sample=False)
    assert fr in sanity[0, ids.shape[1] :].tolist()  # the bias works: without suppression the tag comes out
    for sample in (False, True):
        out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=sample)
        assert not set(out[0, ids.shape[1] :].tolist()) & set(tag_ids(tok))


REMOTE_LOAD = """
import sys
sys.modules["xlmflow"] = None  # the editable install would otherwise still be importable
try:
    import xlmflow  # noqa: F401
    raise SystemExit("xlmflow is importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.tensor([[int(t) for t in sys.argv[2:]]])).logits, "remote_logits.pt")
"""


def test_save_and_load(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    en, fr = tag_ids(tok)
    anchors = list(range(len(tok)))
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    anchors[a] = b
    model = make_model(tok, anchor_ids=anchors)
    folder = M.save_with_code(model, tmp_path / "model")
    ids = torch.tensor([[en, a, b, fr, a]])
    with torch.no_grad():
        expected = model(ids).logits

    M.register()
    M.register()  # idempotent
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(loaded, M.XlmGPT2LMHeadModel)
    assert loaded.lang_of_token.tolist() == model.lang_of_token.tolist()  # non-persistent buffer rebuilt on load
    assert torch.equal(loaded.anchor_map, model.anchor_map)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-6)

    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in names and "modeling_xlmflow.py" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert json.loads((folder / "generation_config.json").read_text())["suppress_tokens"] == [en, fr]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-I", "-c", REMOTE_LOAD, str(folder), *map(str, ids[0].tolist())]
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.allclose(torch.load(tmp_path / "remote_logits.pt"), expected, atol=1e-6)


def test_tie_mode_shares_input_rows_but_not_output_rows(tok):
    en, fr = tag_ids(tok)
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    anchors = list(range(len(tok)))
    anchors[a] = b
    anchors[fr] = b  # tags always keep their own row
    model = make_model(tok, anchor_ids=anchors)
    assert model.anchor_map[a] == b and model.anchor_map[fr] == fr

    def run(token: int):
        with torch.no_grad():
            return model(torch.tensor([[en, token]]), output_hidden_states=True)

    wte = model.transformer.wte.weight
    with torch.no_grad():
        wte[a] += 1.0  # A's own row now differs clearly from B's; as input A must still read B's row
    out_a, out_b = run(a), run(b)
    for h_a, h_b in zip(out_a.hidden_states, out_b.hidden_states, strict=True):
        assert torch.equal(h_a, h_b)
    # Output rows stay per token: the logits are the last hidden state against each token's own (tied) row.
    last = out_a.hidden_states[-1][0, -1]
    logits = out_a.logits[0, -1]
    assert torch.allclose(logits, wte @ last, atol=1e-5)
    assert not torch.isclose(logits[a], logits[b])


def test_init_mode_copies_anchor_rows(tok):
    model = make_model(tok)
    en = tag_ids(tok)[0]
    a, b, c = tok.convert_tokens_to_ids(["a", "b", "c"])
    anchors = list(range(len(tok)))
    anchors[a] = anchors[c] = b
    anchors[en] = b  # ignored: tags are never aligned
    before = model.transformer.wte.weight.detach().clone()
    assert model.init_aligned(anchors) == 2
    after = model.transformer.wte.weight.detach()
    assert torch.equal(after[a], before[b]) and torch.equal(after[c], before[b])
    untouched = [i for i in range(len(tok)) if i not in (a, c)]
    assert torch.equal(after[untouched], before[untouched])


def test_labels_for_masks_exactly_the_tags(tok):
    en, fr = tag_ids(tok)
    ids = torch.cat([encode(tok, "<lang:en> the cat <lang:fr> le chat")] * 2)
    labels = M.labels_for(ids, [en, fr])
    is_tag = (ids == en) | (ids == fr)
    assert is_tag.sum() == 4
    assert torch.all(labels[is_tag] == -100)
    assert torch.equal(labels[~is_tag], ids[~is_tag])
