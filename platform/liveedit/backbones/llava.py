"""``llava-1.5``: ``LlavaForConditionalGeneration`` (CLIP ViT -> 2-layer MLP projector -> LLaMA).

Layout of an example (what ``LlavaProcessor`` makes of ``"<image>" + text`` with no chat
template): ``[bos][<image> x N_v] prompt target``, N_v = (image_size / patch_size)^2 (the CLS
feature is dropped with ``vision_feature_select_strategy="default"``; +1 with ``"full"``).
A text-only example is ``[bos] prompt target``. The adapter scatters
``get_image_features(...)`` into the vision span of ``get_input_embeddings()(input_ids)`` — what
``LlavaModel.forward`` does — and calls the model with ``inputs_embeds``, so image and
text-only examples can share a batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Backbone


class LlavaBackbone(Backbone):
    arch = "llava-1.5"
    model_class_name = "LlavaForConditionalGeneration"
    text_model_type = "llama"
    vision_first = False

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    @property
    def num_vision_tokens(self) -> int:
        config = self.model.config
        vision = config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        return n + (1 if config.vision_feature_select_strategy == "full" else 0)

    @property
    def bridge(self) -> nn.Module:
        """The multimodal projector (what FT-M tunes for LLaVA, paper Table 7)."""
        return self.model.model.multi_modal_projector

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def image_features(self, pixel_values: Tensor) -> Tensor:
        config = self.model.config
        pixel_values = pixel_values.to(self.device, self.vision_tower.dtype)
        features = self.model.get_image_features(
            pixel_values,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output
        return torch.stack(list(features))

    def _lm(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        return self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids
        ).logits

    def _lm_generator(self) -> Any:
        return self.model
