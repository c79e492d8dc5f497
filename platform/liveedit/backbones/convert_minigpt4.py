"""Assemble a MiniGPT-4 ``from_pretrained`` directory from public checkpoints.

MiniGPT-4 = BLIP-2's vision tower + Q-Former (+ query tokens), one linear projection
``llama_proj`` (Q-Former hidden -> LLM hidden) and Vicuna/LLaMA. Its released checkpoint holds only
the projection. This module writes the ``Blip2ForConditionalGeneration`` + LLaMA directory that
:class:`~liveedit.backbones.minigpt4.MiniGPT4Backbone` loads, from:

(a) a BLIP-2 ``from_pretrained`` directory (``Blip2ForConditionalGeneration``, safetensors; only
    ``vision_model.*``, ``qformer.*``, ``query_tokens`` and its image processor are used);
(b) a Vicuna/LLaMA ``from_pretrained`` directory (``LlamaForCausalLM``, safetensors, tokenizer);
(c) the projection: a state dict file holding ``llama_proj.weight`` ``[d_llm, d_qformer]`` and
    ``llama_proj.bias`` ``[d_llm]`` (a ``.safetensors`` file, or a torch file read with
    ``weights_only=True``; MiniGPT-4's ``{"model": {...}}`` wrapping is unwrapped).

``<image>`` is added to the LLaMA tokenizer when missing; when its id falls outside the embedding
matrix, one row (the mean of the existing rows) is appended to the input embeddings and the LM head.
A tokenizer without a pad token gets ``unk`` (else ``eos``) as pad. Every planned tensor name and
shape is checked against a ``Blip2ForConditionalGeneration`` built on the meta device before
anything is written; the output is written to a temporary directory and renamed into place.
Tensors are streamed one source file at a time (one output shard per source shard), so a 7B model
does not need to fit in memory twice.

CLI: ``python -m liveedit.backbones.convert_minigpt4 --blip2 DIR --llama DIR --proj FILE --out DIR``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import IMAGE_TOKEN, write_backbone_json

_VISION_PREFIXES = ("vision_model.", "qformer.")
_PROJ_KEYS = ("llama_proj.weight", "llama_proj.bias")


class ConversionError(ValueError):
    """An input that cannot be converted; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a ``from_pretrained`` directory (single file or sharded)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConversionError(directory, "no safetensors weights (model.safetensors or its index)")


def _read_config(directory: Path, model_type: str) -> dict[str, Any]:
    if not directory.is_dir():
        raise ConversionError(directory, "no such directory")
    path = directory / "config.json"
    if not path.is_file():
        raise ConversionError(directory, "missing config.json")
    config = json.loads(path.read_text())
    if config.get("model_type") != model_type:
        raise ConversionError(
            path, f"model_type is {config.get('model_type')!r}, expected {model_type!r}"
        )
    return config


def load_projection(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(llama_proj.weight, llama_proj.bias)`` from a safetensors or torch state dict file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "no such projection weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
            raise ConversionError(path, f"cannot read as a weights-only torch file: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # MiniGPT-4's released checkpoints wrap the state dict
    if not isinstance(state, dict):
        raise ConversionError(path, f"expected a state dict, found {type(state).__name__}")
    found = []
    for key in _PROJ_KEYS:
        matches = [k for k in state if k == key or k.endswith("." + key)]
        if len(matches) != 1:
            keys = sorted(state)[:10]
            raise ConversionError(
                path,
                f"expected exactly one {key!r} entry, found {matches or 'none'} (keys: {keys})",
            )
        tensor = state[matches[0]]
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(path, f"{matches[0]!r} is not a tensor")
        found.append(tensor)
    return found[0], found[1]


@dataclass
class _Shard:
    """One output shard: tensors read from ``source`` (None: in-memory ``extra``) renamed."""

    source: Path | None
    names: dict[str, str]  # output key -> source key
    shapes: dict[str, tuple[int, ...]]
    extra: dict[str, torch.Tensor]


def _shapes(file: Path, keep: Callable[[str], bool]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if keep(k)}


def convert_minigpt4(
    blip2_dir: str | Path,
    llama_dir: str | Path,
    projection: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a MiniGPT-4 backbone directory to ``out_dir`` (see the module docstring)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tokenizers import AddedToken
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        LlamaConfig,
    )

    blip2_dir, llama_dir, out_dir = Path(blip2_dir), Path(llama_dir), Path(out_dir)
    projection = Path(projection)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConversionError(out_dir, "output directory exists and is not empty")

    # -- configs and inputs --------------------------------------------------------------------
    _read_config(blip2_dir, "blip-2")
    _read_config(llama_dir, "llama")
    blip2_config = Blip2Config.from_pretrained(blip2_dir, local_files_only=True)
    text_config = LlamaConfig.from_pretrained(llama_dir, local_files_only=True)
    weight, bias = load_projection(projection)
    d_q, d_llm = blip2_config.qformer_config.hidden_size, text_config.hidden_size
    if tuple(weight.shape) != (d_llm, d_q) or tuple(bias.shape) != (d_llm,):
        raise ConversionError(
            projection,
            f"llama_proj shapes weight {tuple(weight.shape)}, bias {tuple(bias.shape)}; expected "
            f"weight ({d_llm}, {d_q}) (LLaMA hidden x Q-Former hidden) and bias ({d_llm},)",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(llama_dir, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(blip2_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConversionError(llama_dir, f"cannot load tokenizer / image processor: {e}") from e
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens(
            [AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token else tokenizer.eos_token
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    old_vocab = text_config.vocab_size
    grow = max(0, image_id + 1 - old_vocab)
    text_config.vocab_size = old_vocab + grow

    config = Blip2Config(
        vision_config=blip2_config.vision_config.to_dict(),
        qformer_config=blip2_config.qformer_config.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=blip2_config.num_query_tokens,
        image_token_id=image_id,
    )
    config.architectures = ["Blip2ForConditionalGeneration"]

    # -- plan the shards -------------------------------------------------------------------------
    shards: list[_Shard] = []
    for file in _weight_files(blip2_dir):
        shapes = _shapes(file, lambda k: k.startswith(_VISION_PREFIXES) or k == "query_tokens")
        if shapes:
            shards.append(_Shard(file, {k: k for k in shapes}, shapes, {}))
    proj = {"language_projection.weight": weight, "language_projection.bias": bias}
    shards.append(_Shard(None, {}, {k: tuple(v.shape) for k, v in proj.items()}, proj))
    resized = ("model.embed_tokens.weight", "lm_head.weight")
    for file in _weight_files(llama_dir):
        shapes = _shapes(file, lambda k: True)
        names = {f"language_model.{k}": k for k in shapes}
        out_shapes = {
            f"language_model.{k}": (s[0] + grow, *s[1:]) if k in resized else s
            for k, s in shapes.items()
        }
        shards.append(_Shard(file, names, out_shapes, {}))

    planned = {k: s for shard in shards for k, s in shard.shapes.items()}
    with torch.device("meta"):
        reference = Blip2ForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if config.text_config.tie_word_embeddings and "language_model.lm_head.weight" not in planned:
        expected.pop("language_model.lm_head.weight", None)
    missing = sorted(set(expected) - set(planned))
    unexpected = sorted(set(planned) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(planned) if expected[k] != planned[k])
    if missing or unexpected or mismatched:
        raise ConversionError(
            out_dir,
            "the inputs do not assemble into a MiniGPT-4 model: "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"mismatched {[(k, planned[k], expected[k]) for k in mismatched[:8]]}",
        )

    # -- write -----------------------------------------------------------------------------------
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weight_map: dict[str, str] = {}
        total = 0
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            tensors = dict(shard.extra)
            if shard.source is not None:
                with safe_open(shard.source, framework="pt") as f:
                    for out_key, src_key in shard.names.items():
                        tensors[out_key] = f.get_tensor(src_key)
            for key in ("language_model." + k for k in resized):
                if grow and key in tensors:  # new rows for <image>: the mean of the others
                    rows = tensors[key]
                    tensors[key] = torch.cat([rows, rows.mean(0, keepdim=True).expand(grow, -1)])
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            save_file(tensors, tmp / name, metadata={"format": "pt"})
            for k, v in tensors.items():
                weight_map[k] = name
                total += v.numel() * v.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config.save_pretrained(tmp)
        Blip2Processor(
            image_processor, tokenizer, num_query_tokens=config.num_query_tokens
        ).save_pretrained(tmp)
        info = {
            "converted_from": {
                "blip2": str(blip2_dir),
                "llama": str(llama_dir),
                "projection": str(projection),
            },
            **(metadata or {}),
        }
        write_backbone_json(
            tmp, "minigpt4", d_llm, config.num_query_tokens, text_config.num_hidden_layers, info
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blip2", required=True, help="BLIP-2 from_pretrained directory")
    parser.add_argument("--llama", required=True, help="Vicuna/LLaMA from_pretrained directory")
    parser.add_argument("--proj", required=True, help="file with llama_proj.weight/.bias")
    parser.add_argument("--out", required=True, help="output backbone directory")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = convert_minigpt4(args.blip2, args.llama, args.proj, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
