"""The adapter every editor sees a vision-language model through (DESIGN §2.3).

A :class:`Backbone` wraps one Hugging Face VLLM (``model``) and its processor (tokenizer + image
processor) and owns:

- **LM inputs** for ``(image | None, prompt, target)`` batches (:meth:`Backbone.build_inputs`):
  the LM text is ``prompt + " " + target``; every example gets its :class:`Spans` — half-open
  ``(start, end)`` positions of its vision, prompt and target tokens in the padded sequence,
  computed from token counts while the sequence is assembled (never by slicing from the end).
- **The forward pass** on ``inputs_embeds`` that the adapter builds itself from public methods
  (``get_input_embeddings()``, ``get_image_features()``): the image features of the examples
  that have an image are scattered into their vision spans, so one batch may mix image and
  text-only inputs (text locality) and padding may be on either side. Position ids come from the
  attention mask, so an example's logits do not depend on its padding or its batch neighbours.
- **Hooks** on the output of an LM decoder layer (:meth:`Backbone.layer_hook`), registered with
  ``prepend=True`` so that transformers' own ``output_hidden_states`` recording (installed at the
  first call) sees the edited value.
- **Teacher-forced scoring** of target tokens (:meth:`Backbone.score`) and greedy generation.

Conventions
-----------
- *Frozen by default.* A constructed or loaded backbone is in ``eval()`` mode with
  ``requires_grad=False`` on every parameter: editors (LiveEdit, MEND, ...) never train it.
  Whoever trains part of it says so explicitly: ``backbone.unfreeze(backbone.bridge)`` (FT-M),
  ``backbone.unfreeze(backbone.last_decoder_layer)`` (FT-L), ``backbone.unfreeze()`` (pretraining).
- *Denormals.* Random or lightly trained tiny models produce denormal floats that make CPU matmuls
  ~30x slower (STACK-NOTES). The adapter constructor calls ``torch.set_flush_denormal(True)``
  (a process-wide CPU setting; values below ~1e-38 become 0). Nothing happens at import time.
- *No hub.* Loading reads local directories only (``local_files_only=True``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

BACKBONE_JSON = "liveedit_backbone.json"
"""The small file :meth:`Backbone.save_pretrained` writes next to the HF files: arch + metadata."""

IMAGE_TOKEN = "<image>"

ARCHITECTURES: dict[str, str] = {
    "blip2-opt": "liveedit.backbones.blip2:Blip2OptBackbone",
    "llava-1.5": "liveedit.backbones.llava:LlavaBackbone",
    "minigpt4": "liveedit.backbones.minigpt4:MiniGPT4Backbone",
}
"""Registry: arch name -> adapter class (imported on first use; transformers is heavy)."""

# (HF class name in config.json, text model_type) -> arch name.
_DETECT: dict[tuple[str, str], str] = {
    ("Blip2ForConditionalGeneration", "opt"): "blip2-opt",
    ("Blip2ForConditionalGeneration", "llama"): "minigpt4",
    ("LlavaForConditionalGeneration", "llama"): "llava-1.5",
}
_MODEL_TYPE_TO_CLASS = {
    "blip-2": "Blip2ForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class BackboneError(ValueError):
    """A backbone directory that cannot be loaded (missing file, wrong architecture, inconsistent
    tokenizer/config), or inputs the backbone cannot take. The message names the path."""

    def __init__(self, path: str | Path | None, message: str):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


# ----------------------------------------------------------------------------------------------
# Batches and scores
# ----------------------------------------------------------------------------------------------

Span = tuple[int, int]


@dataclass(frozen=True)
class Spans:
    """Half-open ``(start, end)`` positions of one example's tokens in the LM sequence (padding
    included in the indexing). ``vision`` is None for a text-only input; ``target`` is None when
    the batch was built without targets (generation)."""

    vision: Span | None
    prompt: Span
    target: Span | None


@dataclass
class LMBatch:
    """Padded LM inputs for a batch of ``(image | None, prompt, target)`` examples.

    ``pixel_values`` holds one row per example *with* an image, in batch order (``has_image``
    says which); the vision features of row ``j`` fill the vision span of the ``j``-th example
    that has an image.
    """

    input_ids: Tensor  # [B, L] long; vision positions hold the <image> id
    attention_mask: Tensor  # [B, L] long, 0 on padding
    position_ids: Tensor  # [B, L] long, cumsum(attention_mask) - 1 (0 on padding)
    pixel_values: Tensor | None  # [n_images, C, H, W]
    has_image: Tensor  # [B] bool
    spans: list[Spans]
    padding_side: str = "right"
    prompts: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device: torch.device | str) -> LMBatch:
        pv = None if self.pixel_values is None else self.pixel_values.to(device)
        return LMBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            pv,
            self.has_image.to(device),
            self.spans,
            self.padding_side,
            self.prompts,
            self.targets,
        )

    def span_mask(self, part: str) -> Tensor:
        """``[B, L]`` bool mask of the ``part`` (``"vision"``, ``"prompt"``, ``"target"``)
        positions of every example (all False where the example has no such span)."""
        mask = torch.zeros(self.input_ids.shape, dtype=torch.bool, device=self.input_ids.device)
        for i, spans in enumerate(self.spans):
            span = getattr(spans, part)
            if span is not None:
                mask[i, span[0] : span[1]] = True
        return mask


@dataclass
class Scores:
    """Teacher-forced scores of the target tokens of a batch.

    Row ``i`` holds example ``i``'s target tokens, left-aligned and padded to the longest target
    (``mask`` says which entries are real). Logits at sequence position ``t - 1`` predict the token
    at ``t``; only target tokens are scored. Tensors keep their autograd graph when the forward ran
    with gradients, so ``nll`` can be a training loss.
    """

    target_ids: Tensor  # [B, T] the target tokens (pad id where mask is False)
    logprobs: Tensor  # [B, T] log p(target token) (0 where mask is False)
    argmax: Tensor  # [B, T] argmax prediction at each target position
    mask: Tensor  # [B, T] bool
    logits: Tensor  # [B, T, V] the predicting logits (for KL-type losses)

    @property
    def num_tokens(self) -> Tensor:
        return self.mask.sum(1)

    @property
    def token_accuracy(self) -> Tensor:
        """``[B]`` fraction of target tokens whose argmax prediction is the target token."""
        hits = (self.argmax == self.target_ids) & self.mask
        return hits.sum(1).float() / self.num_tokens.float()

    @property
    def mean_logprob(self) -> Tensor:
        """``[B]`` mean log-probability of the target tokens."""
        return self.logprobs.sum(1) / self.num_tokens.to(self.logprobs.dtype)

    @property
    def nll(self) -> Tensor:
        """``[B]`` mean negative log-likelihood of the target tokens."""
        return -self.mean_logprob

    def tokens(self, i: int) -> tuple[list[int], list[int]]:
        """Example ``i``'s (target ids, argmax ids) as plain lists."""
        m = self.mask[i]
        return self.target_ids[i][m].tolist(), self.argmax[i][m].tolist()


# ----------------------------------------------------------------------------------------------
# Directory inspection and the registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneDir:
    """What :func:`inspect_backbone_dir` found in a directory."""

    path: Path
    arch: str
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # liveedit_backbone.json, {} if absent


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneError(path, f"cannot read {what}: {e}") from e


def inspect_backbone_dir(path: str | Path) -> BackboneDir:
    """Check that ``path`` is a complete backbone directory and detect its architecture.

    Checks, in order: the directory exists; ``config.json`` (the HF model config); safetensors
    weights; a tokenizer (``tokenizer_config.json`` plus ``tokenizer.json`` or
    ``tokenizer.model``); a processor config; a supported (model class, text model type) pair;
    agreement with ``liveedit_backbone.json`` when present. Raises :class:`BackboneError` naming
    the path and what is missing or wrong.
    """
    path = Path(path)
    if not path.is_dir():
        raise BackboneError(path, "no such backbone directory")
    names = {p.name for p in path.iterdir()}

    def require(options: Sequence[str], what: str) -> None:
        if not any(o in names for o in options):
            raise BackboneError(path, f"missing {what} ({' or '.join(options)})")

    require(("config.json",), "the model config")
    require(_WEIGHT_FILES, "safetensors model weights")
    require(("tokenizer_config.json",), "the tokenizer config")
    require(_TOKENIZER_FILES, "the tokenizer vocabulary")
    require(_PROCESSOR_FILES, "the processor / image processor config")

    config = _read_json(path / "config.json", "config.json")
    archs = config.get("architectures") or []
    model_type = config.get("model_type", "")
    cls_name = archs[0] if archs else _MODEL_TYPE_TO_CLASS.get(model_type, "")
    text_type = (config.get("text_config") or {}).get("model_type", "")
    arch = _DETECT.get((cls_name, text_type))
    if arch is None:
        supported = ", ".join(f"{a} ({c} + {t})" for (c, t), a in _DETECT.items())
        found = f"architectures={archs or None}, model_type={model_type!r}"
        if text_type:
            found += f", text model_type={text_type!r}"
        raise BackboneError(
            path, f"unsupported architecture in config.json ({found}); supported: {supported}"
        )
    info: dict[str, Any] = {}
    if BACKBONE_JSON in names:
        info = _read_json(path / BACKBONE_JSON, BACKBONE_JSON)
        if info.get("arch") != arch:
            raise BackboneError(
                path,
                f"{BACKBONE_JSON} says arch {info.get('arch')!r} but config.json holds a "
                f"{arch!r} model ({cls_name} + {text_type})",
            )
    return BackboneDir(path, arch, config, info)


def write_backbone_json(
    path: Path,
    arch: str,
    hidden_size: int,
    num_vision_tokens: int,
    num_layers: int,
    metadata: dict[str, Any],
) -> None:
    """Write ``path/liveedit_backbone.json`` (arch, sizes, free-form ``metadata``)."""
    info = {
        "format": 1,
        "arch": arch,
        "hidden_size": hidden_size,
        "num_vision_tokens": num_vision_tokens,
        "num_layers": num_layers,
        "metadata": metadata,
    }
    (path / BACKBONE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def backbone_class(arch: str) -> type[Backbone]:
    """The adapter class registered for ``arch``."""
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown backbone arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    module, name = ARCHITECTURES[arch].split(":")
    return getattr(importlib.import_module(module), name)


def load_backbone(path: str | Path, *, arch: str | None = None, **kwargs: Any) -> Backbone:
    """Load the backbone saved in ``path`` with the adapter its config calls for.

    ``arch`` (optional) is what the caller expects; a directory holding another architecture is an
    error. ``kwargs`` go to the HF ``from_pretrained`` (e.g. ``dtype``, ``device_map``).
    """
    found = inspect_backbone_dir(path)
    if arch is not None and found.arch != arch:
        raise BackboneError(path, f"holds a {found.arch!r} backbone, expected {arch!r}")
    return backbone_class(found.arch)._load(found, **kwargs)


def describe(backbone: Backbone) -> dict[str, Any]:
    """Summary for ``liveedit backbone info DIR``: arch, d, N_v, layers, parameter count, and the
    metadata recorded at pretraining (``liveedit_backbone.json``), e.g. its accuracies."""
    return {
        "arch": backbone.arch,
        "path": backbone.path,
        "hidden_size": backbone.hidden_size,
        "num_vision_tokens": backbone.num_vision_tokens,
        "num_layers": backbone.num_layers,
        "vocab_size": len(backbone.tokenizer),
        "num_parameters": sum(p.numel() for p in backbone.model.parameters()),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "metadata": dict(backbone.metadata),
    }


# ----------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------

HookFn = Callable[[Tensor], Tensor | None]


class Backbone(ABC):
    """Abstract adapter over one HF VLLM; see the module docstring for the conventions.

    Subclasses set ``arch``, ``model_class_name``, ``text_model_type`` and ``vision_first``
    (layout ``[vision][bos] prompt target`` for BLIP-2-style models, ``[bos][vision] prompt
    target`` for LLaVA) and implement the model-specific accessors.
    """

    arch: ClassVar[str]
    model_class_name: ClassVar[str]
    text_model_type: ClassVar[str]
    vision_first: ClassVar[bool]

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        metadata: dict[str, Any] | None = None,
        path: str | Path | None = None,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.path = None if path is None else str(path)
        torch.set_flush_denormal(True)  # see module docstring: tiny random OPT/LLaMA on CPU
        self._check_consistency()
        self.freeze()

    # -- model-specific pieces -----------------------------------------------------------------

    @property
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The LM's decoder layers (``nn.ModuleList``)."""
        raise NotImplementedError

    @property
    @abstractmethod
    def num_vision_tokens(self) -> int:
        """N_v: the number of LM positions one image occupies."""
        raise NotImplementedError

    @property
    @abstractmethod
    def bridge(self) -> nn.Module:
        """The module between the vision tower and the LM that FT-M fine-tunes (the Q-Former for
        BLIP-2 and MiniGPT-4, the multimodal projector for LLaVA)."""
        raise NotImplementedError

    @property
    @abstractmethod
    def vision_tower(self) -> nn.Module:
        """The image encoder (ViT)."""
        raise NotImplementedError

    @property
    def text_config(self) -> Any:
        return self.model.config.text_config

    @abstractmethod
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """``[n, N_v, d]`` LM-space features of ``n`` images (vision tower + bridge)."""
        raise NotImplementedError

    @abstractmethod
    def _lm(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """Logits of the LM on ``inputs_embeds``."""
        raise NotImplementedError

    @abstractmethod
    def _lm_generator(self) -> Any:
        """The object whose HF ``generate(inputs_embeds=...)`` runs the LM with its head."""
        raise NotImplementedError

    # -- basic properties ----------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """d: the LM hidden size (the width of the hidden states a layer hook sees)."""
        return int(self.text_config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def last_decoder_layer(self) -> nn.Module:
        """The last LM decoder layer (what FT-L fine-tunes)."""
        return self.decoder_layers[-1]

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def vision_tower_parameters(self) -> Iterator[nn.Parameter]:
        return self.vision_tower.parameters()

    def bridge_parameters(self) -> Iterator[nn.Parameter]:
        return self.bridge.parameters()

    def to(self, *args: Any, **kwargs: Any) -> Backbone:
        self.model.to(*args, **kwargs)
        return self

    def freeze(self) -> Backbone:
        """``eval()`` mode and ``requires_grad=False`` on every parameter (the default)."""
        self.model.eval()
        self.model.requires_grad_(False)
        return self

    def unfreeze(self, module: nn.Module | None = None) -> Backbone:
        """Enable gradients for ``module``'s parameters (the whole model if None). The train/eval
        mode is left to the caller."""
        (self.model if module is None else module).requires_grad_(True)
        return self

    def _check_consistency(self) -> None:
        found = (type(self.model).__name__, getattr(self.text_config, "model_type", None))
        if found != (self.model_class_name, self.text_model_type):
            raise BackboneError(
                self.path,
                f"{type(self).__name__} needs {self.model_class_name} + {self.text_model_type}, "
                f"got {found[0]} + {found[1]}",
            )
        tok = self.tokenizer
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_id is None or image_id == tok.unk_token_id:
            raise BackboneError(self.path, f"the tokenizer has no {IMAGE_TOKEN} token")
        if self.model.config.image_token_id is None:  # older BLIP-2 configs: the tokenizer decides
            self.model.config.image_token_id = image_id
        if image_id != self.image_token_id:
            raise BackboneError(
                self.path,
                f"the tokenizer's {IMAGE_TOKEN} id is {image_id} but the model config's image "
                f"token id is {self.image_token_id}",
            )
        vocab = self.model.get_input_embeddings().num_embeddings
        if len(tok) > vocab:
            raise BackboneError(
                self.path, f"the tokenizer has {len(tok)} tokens, the LM embeddings only {vocab}"
            )
        if tok.pad_token_id is None:  # e.g. a raw LLaMA tokenizer: pad positions are masked
            tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token

    # -- loading and saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Backbone:
        """Load ``path``; on the base class the architecture is read from the directory, on an
        adapter class a directory of another architecture is an error."""
        if cls is Backbone:
            return load_backbone(path, **kwargs)
        return load_backbone(path, arch=cls.arch, **kwargs)

    @classmethod
    def _load(cls, found: BackboneDir, **kwargs: Any) -> Backbone:
        import transformers

        path = found.path
        model_cls = getattr(transformers, cls.model_class_name)
        try:
            processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
            model, loading = model_cls.from_pretrained(
                path, local_files_only=True, output_loading_info=True, **kwargs
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            # e.g. weights whose shapes disagree with config.json (transformers raises RuntimeError)
            raise BackboneError(path, f"cannot load the {cls.arch} model/processor: {e}") from e
        missing = sorted(loading.get("missing_keys") or ())
        mismatched = sorted(str(k) for k in loading.get("mismatched_keys") or ())
        if missing or mismatched:
            raise BackboneError(
                path,
                f"weights do not match the config: missing {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}, mismatched shapes {mismatched[:8]}",
            )
        return cls(model, processor, metadata=found.info.get("metadata"), path=path)

    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write model (safetensors), processor (tokenizer + image processor) and
        ``liveedit_backbone.json`` (arch, d, N_v, layers and ``metadata``, e.g. pretraining
        accuracies; ``metadata`` given here is merged into :attr:`metadata` first)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if metadata:
            self.metadata.update(metadata)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        write_backbone_json(
            path,
            self.arch,
            self.hidden_size,
            self.num_vision_tokens,
            self.num_layers,
            self.metadata,
        )
        self.path = str(path)
        return path

    # -- inputs ----------------------------------------------------------------------------------

    def _text_ids(self, prompt: str, target: str | None) -> tuple[list[int], list[int]]:
        """Token ids of ``prompt`` and of the target part of ``prompt + " " + target``.

        The whole text is tokenized once; the prompt/target boundary is the prompt's own token
        count, valid when the prompt's tokens are a prefix of the whole text's (always for
        word-level and GPT-2-style tokenizers at a space). Otherwise the target is tokenized on
        its own (``" " + target``) and appended, so the LM input is exactly prompt ids + target ids.
        """
        tok = self.tokenizer
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if target is None:
            return prompt_ids, []
        full = tok(f"{prompt} {target}", add_special_tokens=False)["input_ids"]
        if full[: len(prompt_ids)] == prompt_ids:
            target_ids = full[len(prompt_ids) :]
        else:
            target_ids = tok(f" {target}", add_special_tokens=False)["input_ids"]
        return prompt_ids, target_ids

    def pixel_values(self, images: Sequence[Any]) -> Tensor:
        """``[n, C, H, W]`` pixel values of PIL images (or image paths)."""
        from PIL import Image

        pil = [
            Image.open(im).convert("RGB") if isinstance(im, str | Path) else im.convert("RGB")
            for im in images
        ]
        return self.image_processor(pil, return_tensors="pt")["pixel_values"]

    def build_inputs(
        self,
        images: Sequence[Any | None],
        prompts: Sequence[str],
        targets: Sequence[str] | None = None,
        padding_side: str = "right",
    ) -> LMBatch:
        """Padded LM inputs and per-example :class:`Spans` for a batch.

        ``images[i]`` is a PIL image (or a path), or None for a text-only input. The LM text is
        ``prompt + " " + target``. Each example is laid out as ``[vision][bos] prompt target``
        (BLIP-2, MiniGPT-4) or ``[bos][vision] prompt target`` (LLaVA), the vision part being
        N_v ``<image>`` placeholders whose embeddings :meth:`forward` replaces by the image
        features; then padded on ``padding_side``. Spans are counted while laying out.
        """
        if len(images) != len(prompts) or (targets is not None and len(targets) != len(prompts)):
            n_t = None if targets is None else len(targets)
            raise BackboneError(
                None, f"batch sizes differ: {len(images)} images, {len(prompts)} prompts, {n_t}"
            )
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        if not prompts:
            raise BackboneError(None, "empty batch")
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        n_v = self.num_vision_tokens
        max_pos = getattr(self.text_config, "max_position_embeddings", None)

        rows: list[list[int]] = []
        layouts: list[tuple[Span | None, Span, Span | None]] = []
        for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            target = None if targets is None else targets[i]
            p_ids, t_ids = self._text_ids(prompt, target)
            if target is not None and not t_ids:
                raise BackboneError(None, f"example {i}: target {target!r} has no tokens")
            vision_ids = [self.image_token_id] * n_v if image is not None else []
            head = vision_ids + bos if self.vision_first else bos + vision_ids
            v_start = 0 if self.vision_first else len(bos)
            vision = (v_start, v_start + n_v) if vision_ids else None
            prompt_span = (len(head), len(head) + len(p_ids))
            target_span = None if target is None else (prompt_span[1], prompt_span[1] + len(t_ids))
            if prompt_span[1] == 0 and target_span is not None:
                raise BackboneError(None, f"example {i}: nothing precedes the target to predict it")
            row = head + p_ids + t_ids
            if max_pos is not None and len(row) > max_pos:
                raise BackboneError(
                    None, f"example {i}: {len(row)} tokens exceed the LM's {max_pos} positions"
                )
            rows.append(row)
            layouts.append((vision, prompt_span, target_span))

        length = max(len(r) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        spans = []
        for i, (row, layout) in enumerate(zip(rows, layouts, strict=True)):
            vision, prompt_span, target_span = layout
            offset = length - len(row) if padding_side == "left" else 0
            input_ids[i, offset : offset + len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, offset : offset + len(row)] = 1

            def shift(span: Span | None, off: int = offset) -> Span | None:
                return None if span is None else (span[0] + off, span[1] + off)

            spans.append(Spans(shift(vision), shift(prompt_span), shift(target_span)))
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        has_image = torch.tensor([im is not None for im in images], dtype=torch.bool)
        with_images = [im for im in images if im is not None]
        pixel_values = self.pixel_values(with_images) if with_images else None
        return LMBatch(
            input_ids,
            attention_mask,
            position_ids,
            pixel_values,
            has_image,
            spans,
            padding_side,
            tuple(prompts),
            None if targets is None else tuple(targets),
        )

    def inputs_embeds(self, batch: LMBatch) -> Tensor:
        """``[B, L, d]`` LM input embeddings: token embeddings with the image features scattered
        into the vision spans (row-major: the j-th image fills the j-th vision span)."""
        embeds = self.model.get_input_embeddings()(batch.input_ids)
        if batch.pixel_values is None:
            return embeds
        feats = self.image_features(batch.pixel_values).to(embeds.dtype)
        vision = batch.span_mask("vision")
        if feats.shape[0] * feats.shape[1] != int(vision.sum()):
            raise BackboneError(
                self.path, f"{tuple(feats.shape[:2])} image features for {int(vision.sum())} slots"
            )
        return embeds.masked_scatter(vision.unsqueeze(-1), feats)

    # -- running ---------------------------------------------------------------------------------

    def forward(self, batch: LMBatch) -> Tensor:
        """``[B, L, V]`` logits. Runs with gradients unless the caller disables them."""
        batch = batch.to(self.device)
        embeds = self.inputs_embeds(batch)
        return self._lm(embeds, batch.attention_mask, batch.position_ids)

    def forward_with_hidden(
        self, batch: LMBatch, layers: Sequence[int]
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Logits and the ``[B, L, d]`` outputs of decoder ``layers``. The outputs are recorded
        after every hook installed with :meth:`layer_hook` (they show the edited value)."""
        captured: dict[int, Tensor] = {}
        handles = []
        try:
            for layer in layers:
                index = self._layer_index(layer)

                def record(module: nn.Module, args: Any, output: Any, key: int = layer) -> None:
                    captured[key] = output[0] if isinstance(output, tuple) else output

                handles.append(self.decoder_layers[index].register_forward_hook(record))
            logits = self.forward(batch)
        finally:
            for h in handles:
                h.remove()
        return logits, captured

    def score(self, batch: LMBatch, logits: Tensor | None = None) -> Scores:
        """Teacher-forced scores of the target tokens (``logits`` reuses a forward's output)."""
        if batch.targets is None:
            raise BackboneError(None, "score() needs a batch built with targets")
        if logits is None:
            logits = self.forward(batch)
        device = logits.device
        lengths = torch.tensor([s.target[1] - s.target[0] for s in batch.spans], device=device)
        starts = torch.tensor([s.target[0] for s in batch.spans], device=device)
        steps = torch.arange(int(lengths.max()), device=device)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        token_pos = torch.where(mask, starts.unsqueeze(1) + steps, starts.unsqueeze(1))
        target_ids = batch.input_ids.to(device).gather(1, token_pos)
        pred_pos = token_pos - 1
        index = pred_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        pred_logits = logits.gather(1, index)  # [B, T, V]
        logp = torch.log_softmax(pred_logits.float(), dim=-1)
        token_logp = logp.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
        pad = self.tokenizer.pad_token_id
        return Scores(
            target_ids=target_ids.masked_fill(~mask, pad),
            logprobs=token_logp.masked_fill(~mask, 0.0),
            argmax=pred_logits.argmax(-1),
            mask=mask,
            logits=pred_logits,
        )

    @torch.no_grad()
    def generate_ids(
        self, images: Sequence[Any | None], prompts: Sequence[str], max_new_tokens: int = 8
    ) -> list[list[int]]:
        """Greedy continuation ids of each prompt (left-padded batch; stops at EOS)."""
        batch = self.build_inputs(images, prompts, None, padding_side="left").to(self.device)
        embeds = self.inputs_embeds(batch)
        tok = self.tokenizer
        out = self._lm_generator().generate(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        result = []  # with inputs_embeds only, HF returns just the new tokens
        for row in out.tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            result.append(row)
        return result

    def generate(
        self, images: Sequence[Any | None], prompts: Sequence[str], max_new_tokens: int = 8
    ) -> list[str]:
        """Greedy continuations of each prompt, decoded without special tokens."""
        ids = self.generate_ids(images, prompts, max_new_tokens=max_new_tokens)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]

    # -- hooks -----------------------------------------------------------------------------------

    def _layer_index(self, layer_index: int) -> int:
        n = self.num_layers
        if not -n <= layer_index < n:
            raise IndexError(f"layer {layer_index} out of range for a {n}-layer LM")
        return layer_index % n

    @contextlib.contextmanager
    def layer_hook(self, layer_index: int, fn: HookFn) -> Iterator[None]:
        """Within the context, replace the output hidden state ``h`` ``[B, L, d]`` of decoder
        layer ``layer_index`` by ``fn(h)`` (``None`` keeps ``h``) in every forward, generation
        steps included (there ``L`` is 1 after the first step). The hook is registered with
        ``prepend=True`` (STACK-NOTES: transformers' hidden-state recording then sees the edited
        value) and removed on exit, also when the body raises."""
        layer = self.decoder_layers[self._layer_index(layer_index)]

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            new = fn(hidden)
            if new is None:
                return None
            if new.shape != hidden.shape:
                raise ValueError(
                    f"layer hook returned shape {tuple(new.shape)}, expected {tuple(hidden.shape)}"
                )
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = layer.register_forward_hook(hook, prepend=True)
        try:
            yield
        finally:
            handle.remove()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(arch={self.arch!r}, d={self.hidden_size}, "
            f"N_v={self.num_vision_tokens}, layers={self.num_layers}, path={self.path!r})"
        )
