"""Tiny twins of the three architectures, small enough to pretrain on two CPU cores.

Defaults: LM hidden 128 (64-256 are sensible), 8 LM layers (so l_e can be swept), 4 heads, FFN
4d; 48x48 images with ViT patch 16 (a 3x3 patch grid, aligned with the synthetic world's 3x3
layout), ViT hidden 64 with 2 layers (3 for LLaVA, whose features come from the penultimate
layer as in LLaVA-1.5); BLIP-2 / MiniGPT-4 Q-Former hidden 64, 2 layers, cross-attention in
every layer, 9 query tokens. N_v is 9 for every twin. Dropout defaults to 0; the LM's initial
weights have std 0.08 (see :attr:`TwinSpec.init_std`).

:func:`build_twin` returns a randomly initialised, frozen :class:`~liveedit.backbones.base.Backbone`
in well under a second; pretraining (a separate step) calls it, unfreezes, trains and saves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .base import Backbone, backbone_class
from .processors import build_processor
from .tokenizer import build_tokenizer

TWIN_ARCHS = ("blip2-opt", "llava-1.5", "minigpt4")
QFORMER_INIT_STD = 0.02
"""Initial weight std of the BLIP-2 family's ViT, Q-Former and query tokens (BLIP-2's value)."""


@dataclass(frozen=True)
class TwinSpec:
    """Sizes of a tiny twin; every field can be overridden through :func:`build_twin`."""

    hidden_size: int = 128
    num_layers: int = 8
    num_heads: int = 4
    intermediate_size: int | None = None  # None: 4 * hidden_size
    max_positions: int = 256
    image_size: int = 48
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int | None = None  # None: 2 (BLIP-2 family), 3 (LLaVA, penultimate layer)
    vision_heads: int = 4
    qformer_hidden_size: int = 64
    qformer_layers: int = 2
    qformer_heads: int = 4
    num_query_tokens: int = 9
    dropout: float = 0.0
    init_std: float = 0.08
    """Standard deviation of the LM's initial weights (HF ``initializer_range`` / OPT ``init_std``).
    LLaMA and OPT use 0.02 at d = 4096; the twins' d = 128 is 32x narrower, and 0.08 (about
    1/sqrt(d)) let the twin's attention pick out the object a question names sooner (held-out
    vqa 70% vs 62% at the same step)."""
    lowercase: bool = False

    def validate(self) -> None:
        for name, width, heads in (
            ("hidden_size", self.hidden_size, self.num_heads),
            ("vision_hidden_size", self.vision_hidden_size, self.vision_heads),
            ("qformer_hidden_size", self.qformer_hidden_size, self.qformer_heads),
        ):
            if width <= 0 or heads <= 0 or width % heads:
                raise ValueError(f"{name}={width} must be a positive multiple of heads={heads}")
        if self.num_layers < 1 or self.qformer_layers < 1 or self.num_query_tokens < 1:
            raise ValueError("num_layers, qformer_layers and num_query_tokens must be >= 1")
        if self.init_std <= 0:
            raise ValueError(f"init_std={self.init_std} must be > 0")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.patch_size}")


def twin_spec(**overrides: Any) -> TwinSpec:
    """A :class:`TwinSpec` with ``overrides``; unknown names are an error."""
    known = {f.name for f in dataclasses.fields(TwinSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown twin settings {unknown}; known: {sorted(known)}")
    spec = TwinSpec(**overrides)
    spec.validate()
    return spec


def twin_config(arch: str, spec: TwinSpec, vocab_size: int, image_token_id: int) -> Any:
    """The HF config of the ``arch`` twin (token ids: pad 0, bos 1, eos 2)."""
    from transformers import (
        Blip2Config,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        OPTConfig,
    )

    d = spec.hidden_size
    ffn = spec.intermediate_size or 4 * d
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "blip2-opt":
        text = OPTConfig(
            vocab_size=vocab_size,
            hidden_size=d,
            word_embed_proj_dim=d,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            ffn_dim=ffn,
            max_position_embeddings=spec.max_positions,
            dropout=spec.dropout,
            attention_dropout=spec.dropout,
            init_std=spec.init_std,
            **ids,
        )
    elif arch in ("llava-1.5", "minigpt4"):
        text = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            intermediate_size=ffn,
            max_position_embeddings=spec.max_positions,
            attention_dropout=spec.dropout,
            initializer_range=spec.init_std,
            **ids,
        )
    else:
        raise KeyError(f"unknown twin arch {arch!r}; known: {TWIN_ARCHS}")

    vision = {
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": 4 * spec.vision_hidden_size,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "attention_dropout": spec.dropout,
    }
    if arch == "llava-1.5":
        vision_config = CLIPVisionConfig(
            num_hidden_layers=spec.vision_layers or 3,
            projection_dim=spec.vision_hidden_size,
            **vision,
        )
        return LlavaConfig(
            vision_config=vision_config.to_dict(),
            text_config=text.to_dict(),
            image_token_id=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
    # HF's BLIP-2 vision config defaults to initializer_range 1e-10 (its weights always come from
    # a checkpoint): a twin built with it starts with a ViT of all-but-zero weights. The twins use
    # the CLIP / Q-Former value, 0.02.
    vision_config = Blip2VisionConfig(
        num_hidden_layers=spec.vision_layers or 2, initializer_range=QFORMER_INIT_STD, **vision
    )
    qformer = Blip2QFormerConfig(
        hidden_size=spec.qformer_hidden_size,
        num_hidden_layers=spec.qformer_layers,
        num_attention_heads=spec.qformer_heads,
        intermediate_size=4 * spec.qformer_hidden_size,
        encoder_hidden_size=spec.vision_hidden_size,
        cross_attention_frequency=1,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        vocab_size=vocab_size,
        initializer_range=QFORMER_INIT_STD,
    )
    return Blip2Config(
        vision_config=vision_config.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=spec.num_query_tokens,
        image_token_id=image_token_id,
    )


def build_twin(arch: str, vocabulary: Iterable[str], seed: int = 0, **overrides: Any) -> Backbone:
    """A randomly initialised tiny ``arch`` backbone over a word-level tokenizer of
    ``vocabulary`` (a list of words, e.g. ``world.json["vocabulary"]``).

    Initialisation is deterministic in ``seed`` and leaves the global RNG state untouched.
    ``overrides`` are :class:`TwinSpec` fields (``hidden_size=64, num_layers=6, ...``). The spec
    and seed are recorded in ``backbone.metadata["twin"]``.
    """
    import transformers

    if arch not in TWIN_ARCHS:
        raise KeyError(f"unknown twin arch {arch!r}; known: {TWIN_ARCHS}")
    spec = twin_spec(**overrides)
    tokenizer = build_tokenizer(vocabulary, lowercase=spec.lowercase)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = twin_config(arch, spec, len(tokenizer), image_id)
    cls = backbone_class(arch)
    model_cls = getattr(transformers, cls.model_class_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        queries = getattr(model, "query_tokens", None)
        if queries is not None:
            # HF zero-initialises BLIP-2's query tokens (expecting a checkpoint); nine identical
            # queries give nine identical outputs, and identical gradients keep them identical, so
            # the LM would see one pooled image token nine times. BLIP-2 draws them from
            # N(0, 0.02) (LAVIS ``Blip2Base.init_Qformer``).
            with torch.no_grad():
                queries.normal_(0.0, QFORMER_INIT_STD)
    processor = build_processor(
        arch,
        tokenizer,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        num_query_tokens=spec.num_query_tokens,
    )
    twin = {"seed": seed, **dataclasses.asdict(spec)}
    return cls(model, processor, metadata={"twin": twin})
