"""``minigpt4``: BLIP-2's vision tower and Q-Former, one linear projection (``llama_proj``) and a
LLaMA/Vicuna LM, held in a ``Blip2ForConditionalGeneration`` with a LLaMA text config (the
``language_projection`` is MiniGPT-4's ``llama_proj``). Released MiniGPT-4 weights are assembled
into such a directory by :mod:`liveedit.backbones.convert_minigpt4`.

Prompt layout is BLIP-2's: ``[<image> x N_v][bos] prompt target``, with no chat template (the
editing baselines feed the bare prompt).
"""

from __future__ import annotations

from torch import nn

from .blip2 import Blip2FamilyBackbone


class MiniGPT4Backbone(Blip2FamilyBackbone):
    arch = "minigpt4"
    text_model_type = "llama"

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.language_model.model.layers
