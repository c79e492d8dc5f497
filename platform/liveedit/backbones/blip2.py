"""BLIP-2 family adapters: ``Blip2ForConditionalGeneration`` (vision ViT -> Q-Former -> one linear
``language_projection`` -> decoder-only LM). ``blip2-opt`` uses OPT; MiniGPT-4
(:mod:`liveedit.backbones.minigpt4`) is the same container with a LLaMA/Vicuna LM.

Layout of an example (as ``Blip2Processor`` lays it out): ``[<image> x N_v][bos] prompt target``
with N_v = ``num_query_tokens``; a text-only example is ``[bos] prompt target`` (the LM alone, as
the baselines run text locality). The adapter builds ``inputs_embeds`` itself
(``get_input_embeddings`` + ``get_image_features``) and calls ``model.language_model`` — the
same two steps ``Blip2ForConditionalGeneration.forward`` takes for a decoder-only LM — so that
image and text-only examples can share a batch.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import Backbone, BackboneError


class Blip2FamilyBackbone(Backbone):
    """Shared code of ``blip2-opt`` and ``minigpt4``."""

    model_class_name = "Blip2ForConditionalGeneration"
    vision_first = True

    def _check_consistency(self) -> None:
        if not self.model.config.use_decoder_only_language_model:
            raise BackboneError(self.path, "only decoder-only BLIP-2 language models are supported")
        super()._check_consistency()

    @property
    def num_vision_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def bridge(self) -> nn.Module:
        """The Q-Former (what FT-M tunes for BLIP-2 / MiniGPT-4, paper Table 7)."""
        return self.model.qformer

    @property
    def projection(self) -> nn.Linear:
        """The linear map from Q-Former outputs to the LM (MiniGPT-4's ``llama_proj``)."""
        return self.model.language_projection

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_model

    def image_features(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.to(self.device, self.vision_tower.dtype)
        return self.model.get_image_features(pixel_values).pooler_output

    def _lm(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        return self.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids
        ).logits

    def _lm_generator(self) -> Any:
        return self.model.language_model


class Blip2OptBackbone(Blip2FamilyBackbone):
    """``blip2-opt``: BLIP-2 with an OPT language model (Salesforce/blip2-opt-2.7b's layout)."""

    arch = "blip2-opt"
    text_model_type = "opt"

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.language_model.model.decoder.layers
