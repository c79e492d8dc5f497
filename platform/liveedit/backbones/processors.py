"""Processors (tokenizer + image processor) for the tiny twins, without torchvision.

``blip2-opt`` and ``minigpt4`` use ``Blip2Processor`` with ``BlipImageProcessorPil`` (resize to a
square, CLIP mean/std), ``llava-1.5`` uses ``LlavaProcessor`` with ``CLIPImageProcessorPil``
(shortest edge + centre crop) and ``patch_size`` / ``vision_feature_select_strategy="default"`` /
``num_additional_image_tokens=1``, the settings of llava-hf/llava-1.5-7b-hf. The processors save
into and reload from a backbone directory (``AutoProcessor``).
"""

from __future__ import annotations

from typing import Any


def build_processor(
    arch: str, tokenizer: Any, *, image_size: int, patch_size: int, num_query_tokens: int = 0
) -> Any:
    """The processor of ``arch`` around ``tokenizer`` for ``image_size`` square images."""
    from transformers import (
        Blip2Processor,
        BlipImageProcessorPil,
        CLIPImageProcessorPil,
        LlavaProcessor,
    )

    if arch in ("blip2-opt", "minigpt4"):
        image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
        return Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query_tokens)
    if arch == "llava-1.5":
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    raise KeyError(f"unknown backbone arch {arch!r}")
