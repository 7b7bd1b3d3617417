"""Cross-lingual GPT-2 (XLM-style language embeddings) for transformers 5.

Self-contained on purpose: it imports only torch, transformers and the standard library, because
``save_with_code`` copies this very file into each saved model folder as ``modeling_xlmflow.py`` so
that anyone can load the model with ``trust_remote_code=True`` without installing xlmflow.

Language ids: index 0 means "no language yet" (positions before any ``<lang:xx>`` tag); index i+1
belongs to ``config.lang_token_ids[i]`` / ``config.langs[i]``. A position's language is the one of the
last tag at or before it, so a tag switches the language from its own position on.
"""

from __future__ import annotations

import shutil
from dataclasses import field
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.gpt2.modeling_gpt2 import GPT2Model, GPT2PreTrainedModel
from transformers.utils.deprecation import deprecate_kwarg


class XlmGPT2Config(GPT2Config):
    """GPT-2 config plus the language tags and the optional embedding-tying map.

    transformers 5 turns config subclasses into keyword-only dataclasses that accept extra kwargs,
    so declaring fields is all ``from_pretrained`` needs.
    """

    model_type = "xlmflow-gpt2"
    lang_token_ids: list[int] = field(default_factory=list)  # tag token ids, language i+1 = entry i
    langs: list[str] = field(default_factory=list)  # language codes, same order
    anchor_ids: list[int] | None = None  # tie mode: input-embedding row used by each token id
    use_lang_embeddings: bool = True  # False: no language embedding (plain GPT-2 inputs; the ablation)


def _anchor_tensor(anchor_ids, vocab_size: int, tag_ids) -> torch.Tensor:
    """Token id -> anchor id, with the tags forced onto themselves (a tag never borrows a row)."""
    anchors = torch.as_tensor(anchor_ids, dtype=torch.long).clone()
    if anchors.shape != (vocab_size,):
        raise ValueError(f"anchor_ids must hold one id per token ({vocab_size}), got shape {tuple(anchors.shape)}")
    tags = torch.as_tensor(list(tag_ids), dtype=torch.long)
    anchors[tags] = tags
    return anchors


def labels_for(input_ids: torch.Tensor, tag_ids) -> torch.Tensor:
    """Labels for the LM loss: ``input_ids`` with tag positions set to -100 (tags are inputs, never targets).

    The model shifts labels itself, so nothing else changes.
    """
    tags = torch.as_tensor(list(tag_ids), dtype=input_ids.dtype, device=input_ids.device)
    return input_ids.masked_fill(torch.isin(input_ids, tags), -100)


class _LanguageInputs:
    """What both heads share: the language embedding, the token -> language map, the tie-mode anchor map, and the
    input embeddings built from them (token row, through the anchor map, + language embedding)."""

    def _add_language_inputs(self, config: XlmGPT2Config) -> None:
        # padding_idx=0: row 0 ("no language yet") stays zero and untrained, so untagged text sees plain GPT-2
        # inputs; the other rows get the usual normal(0, initializer_range) init from _init_weights.
        self.lang_embeddings = (  # none at all when off: a parameter without gradients would stop DDP
            nn.Embedding(len(config.lang_token_ids) + 1, config.n_embd, padding_idx=0)
            if config.use_lang_embeddings
            else None
        )
        # token id -> language index (0 for non-tags); derived from the config, hence not saved.
        self.register_buffer("lang_of_token", torch.empty(config.vocab_size, dtype=torch.long), persistent=False)
        if config.anchor_ids is not None:  # saved, so a checkpoint carries the exact map it was trained with
            self.register_buffer("anchor_map", torch.empty(config.vocab_size, dtype=torch.long))
        else:
            self.anchor_map = None

    def _init_language_buffers(self, module) -> None:
        """Buffers are filled here (from ``_init_weights``): from_pretrained builds the model on the meta device
        and only re-creates non-persistent buffers (empty) before calling it. ``init.copy_`` skips loaded ones."""
        if module is self:
            cfg = self.config
            lang_of_token = torch.zeros(cfg.vocab_size, dtype=torch.long)
            lang_of_token[torch.as_tensor(cfg.lang_token_ids, dtype=torch.long)] = torch.arange(
                1, len(cfg.lang_token_ids) + 1
            )
            init.copy_(self.lang_of_token, lang_of_token)
            if self.anchor_map is not None:
                init.copy_(self.anchor_map, _anchor_tensor(cfg.anchor_ids, cfg.vocab_size, cfg.lang_token_ids))

    def lang_ids_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Each position's language: the one of the last tag at or before it (0 before any tag)."""
        lang = self.lang_of_token[input_ids]
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(lang)
        last_tag = torch.where(lang > 0, pos, -1).cummax(dim=-1).values
        return torch.where(last_tag >= 0, lang.gather(-1, last_tag.clamp(min=0)), 0)

    def language_embeds(self, input_ids: torch.Tensor, lang_ids: torch.Tensor | None) -> torch.Tensor:
        """Token rows (through the anchor map in tie mode) + language embeddings (``lang_ids`` derived from the
        tags when None)."""
        if lang_ids is None:
            lang_ids = self.lang_ids_for(input_ids)
        ids = input_ids if self.anchor_map is None else self.anchor_map[input_ids]
        embeds = self.transformer.wte(ids)
        return embeds if self.lang_embeddings is None else embeds + self.lang_embeddings(lang_ids)


class XlmGPT2LMHeadModel(_LanguageInputs, GPT2LMHeadModel):
    """GPT-2 whose input is token emb + position emb + language emb (XLM), with tags as inputs only."""

    config_class = XlmGPT2Config

    def __init__(self, config: XlmGPT2Config):
        # GPT2LMHeadModel.__init__ would run post_init (weight init) before our extra modules exist;
        # building the same two modules here lets one post_init initialise everything, fresh or loaded.
        GPT2PreTrainedModel.__init__(self, config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._add_language_inputs(config)
        self.post_init()
        if config.lang_token_ids:  # generation never emits a tag; saved in generation_config.json
            self.generation_config.suppress_tokens = list(config.lang_token_ids)

    def _init_weights(self, module):
        super()._init_weights(module)
        self._init_language_buffers(module)

    @torch.no_grad()
    def init_aligned(self, anchor_ids) -> int:
        """The "init" alignment mode: copy each anchor's input row to the tokens aligned to it.

        Returns how many rows were written (tokens whose anchor is another token; tags are never touched).
        With the usual GPT-2 tying the output rows start equal too, then training lets them diverge.
        """
        wte = self.transformer.wte.weight
        anchors = _anchor_tensor(anchor_ids, wte.shape[0], self.config.lang_token_ids).to(wte.device)
        moved = (anchors != torch.arange(wte.shape[0], device=wte.device)).nonzero().squeeze(-1)
        wte[moved] = wte[anchors[moved]]  # the right side is gathered first, so chains read original rows
        return int(moved.numel())

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as on the parent, else it would be dropped
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        lang_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        """GPT2LMHeadModel.forward plus ``lang_ids`` (derived from ``input_ids`` when None; a slice fed after a
        cache cannot see earlier tags, so pass ``lang_ids`` then, as ``generate`` does).

        The parent's arguments are spelled out because ``generate`` validates its kwargs against this signature.
        The embeddings are built here and handed over as ``inputs_embeds``; GPT2Model adds the positions.
        """
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds, input_ids = self.language_embeds(input_ids, lang_ids), None
        elif lang_ids is not None and self.lang_embeddings is not None:
            inputs_embeds = inputs_embeds + self.lang_embeddings(lang_ids)
        return super().forward(
            input_ids=input_ids,
            cache=cache,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(self, input_ids, lang_ids=None, **kwargs):
        """Under the KV cache the forward sees only the new tokens, so languages are worked out here, where the
        full sequence is known, then cut to the positions the step feeds. Explicit ``lang_ids`` (prompt length)
        are extended by repeating the last value, like GPT-2's token_type_ids; doing it here keeps it stateless.
        """
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        if lang_ids is None:
            lang_ids = self.lang_ids_for(input_ids)
        elif (missing := input_ids.shape[-1] - lang_ids.shape[-1]) > 0:
            lang_ids = torch.cat([lang_ids, lang_ids[:, -1:].expand(-1, missing)], dim=-1)
        step = model_inputs.get("input_ids")
        if step is None:  # first step from inputs_embeds: only explicit lang_ids can cover it
            step = model_inputs["inputs_embeds"]
        if lang_ids.shape[-1] >= step.shape[1]:
            model_inputs["lang_ids"] = lang_ids[:, -step.shape[1] :].to(step.device)
        return model_inputs


class XlmGPT2ForSequenceClassification(_LanguageInputs, GPT2PreTrainedModel):
    """The same inputs (language embeddings, tie-mode anchors) and transformer, and a linear head on the hidden state
    of each row's last non-pad token, as transformers' GPT2ForSequenceClassification reads it. Rows may be padded on
    the right (causal attention never lets a real position see the padding) or on the left (then pass
    ``attention_mask`` and ``position_ids``). Built from a pretrained language model with ``from_pretrained(folder,
    num_labels=..., id2label=...)``: the transformer and language embeddings load, the head starts fresh."""

    config_class = XlmGPT2Config

    def __init__(self, config: XlmGPT2Config):
        GPT2PreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self._add_language_inputs(config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        self._init_language_buffers(module)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        lang_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        embeds = self.language_embeds(input_ids, lang_ids)
        hidden = self.transformer(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        ).last_hidden_state
        real = input_ids != self.config.pad_token_id
        last = (torch.arange(input_ids.shape[-1], device=input_ids.device) * real).argmax(-1)
        logits = self.score(hidden[torch.arange(len(input_ids), device=hidden.device), last])
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)


def register() -> None:
    """Make the Auto classes know "xlmflow-gpt2" (idempotent)."""
    AutoConfig.register(XlmGPT2Config.model_type, XlmGPT2Config, exist_ok=True)
    AutoModelForCausalLM.register(XlmGPT2Config, XlmGPT2LMHeadModel, exist_ok=True)
    AutoModelForSequenceClassification.register(XlmGPT2Config, XlmGPT2ForSequenceClassification, exist_ok=True)


def save_with_code(model: XlmGPT2LMHeadModel | XlmGPT2ForSequenceClassification, folder) -> Path:
    """save_pretrained (safetensors only in transformers 5) plus this file as ``modeling_xlmflow.py``, with an
    ``auto_map`` so ``trust_remote_code=True`` loading works without xlmflow."""
    folder = Path(folder)
    model.config.auto_map = {
        "AutoConfig": "modeling_xlmflow.XlmGPT2Config",
        "AutoModelForCausalLM": "modeling_xlmflow.XlmGPT2LMHeadModel",
        "AutoModelForSequenceClassification": "modeling_xlmflow.XlmGPT2ForSequenceClassification",
    }
    model.save_pretrained(folder)
    shutil.copyfile(Path(__file__).resolve(), folder / "modeling_xlmflow.py")
    return folder


if __name__ == "xlmflow.tasks.common.model":  # imported as part of xlmflow (not as a model folder's remote code)
    register()
