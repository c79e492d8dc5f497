"""MiniGPT-4 converter on tiny tensors written in the public formats: a saved BLIP-2 directory, a
saved LlamaForCausalLM directory and a ``{"llama_proj.weight", "llama_proj.bias"}`` state dict."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from liveedit.backbones import MiniGPT4Backbone, build_twin, load_backbone  # noqa: E402
from liveedit.backbones.convert_minigpt4 import (  # noqa: E402
    ConversionError,
    convert_minigpt4,
    load_projection,
    main,
)

WORDS = "What colour is the object? The answer is: red blue who wrote the book".split()
D_LLM, D_Q = 96, 32


def raw_llama_tokenizer():
    """A LLaMA-like tokenizer without <image> and without a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [
        "<unk>",
        "<s>",
        "</s>",
        *sorted({w for w in " ".join(WORDS).replace("?", " ? ").replace(":", " : ").split()}),
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("sources")
    blip2 = build_twin(
        "blip2-opt",
        WORDS,
        seed=5,
        hidden_size=64,
        num_layers=2,
        qformer_hidden_size=D_Q,
        num_query_tokens=4,
    )
    blip2.model.save_pretrained(root / "blip2")  # plain HF format, as on the hub
    blip2.processor.save_pretrained(root / "blip2")

    tokenizer = raw_llama_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=D_LLM,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).eval()
    llama.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")

    weight, bias = torch.randn(D_LLM, D_Q), torch.randn(D_LLM)
    torch.save({"model": {"llama_proj.weight": weight, "llama_proj.bias": bias}}, root / "proj.pth")
    save_file({"llama_proj.weight": weight, "llama_proj.bias": bias}, root / "proj.safetensors")
    return {"root": root, "blip2": blip2, "llama": llama, "weight": weight, "bias": bias}


@pytest.mark.parametrize("proj_file", ["proj.pth", "proj.safetensors"])
def test_convert_produces_a_loadable_minigpt4(sources, tmp_path, proj_file):
    root = sources["root"]
    out = convert_minigpt4(root / "blip2", root / "llama", root / proj_file, tmp_path / "mg4")
    bb = load_backbone(out)
    assert isinstance(bb, MiniGPT4Backbone)
    assert (bb.hidden_size, bb.num_layers, bb.num_vision_tokens) == (D_LLM, 2, 4)
    torch.testing.assert_close(bb.projection.weight, sources["weight"], atol=0, rtol=0)
    torch.testing.assert_close(bb.projection.bias, sources["bias"], atol=0, rtol=0)
    blip2 = sources["blip2"].model
    torch.testing.assert_close(bb.model.query_tokens, blip2.query_tokens, atol=0, rtol=0)
    for a, b in zip(bb.model.qformer.parameters(), blip2.qformer.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(bb.vision_tower.parameters(), blip2.vision_model.parameters(), strict=True):
        assert torch.equal(a, b)

    # <image> was added (vocab + 1, a mean row), pad fell back to unk
    llama = sources["llama"]
    vocab = llama.config.vocab_size
    assert bb.image_token_id == vocab and len(bb.tokenizer) == vocab + 1
    assert bb.tokenizer.pad_token == "<unk>"
    emb = bb.model.get_input_embeddings().weight
    torch.testing.assert_close(emb[:vocab], llama.get_input_embeddings().weight, atol=0, rtol=0)
    torch.testing.assert_close(emb[vocab], llama.get_input_embeddings().weight.mean(0))

    # text-only inputs run the source LLaMA exactly
    batch = bb.build_inputs([None], ["What colour is the object?"], ["red"])
    with torch.no_grad():
        ours = bb.forward(batch)[..., :vocab]
        ref = llama(input_ids=batch.input_ids).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # and image inputs run through vision + Q-Former + llama_proj
    image = Image.new("RGB", (48, 48), (200, 30, 30))
    with torch.no_grad():
        logits = bb.forward(
            bb.build_inputs([image, None], ["What colour?", "who"], ["red", "wrote"])
        )
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()
    info = json.loads((out / "liveedit_backbone.json").read_text())
    assert info["arch"] == "minigpt4" and info["metadata"]["converted_from"]["projection"].endswith(
        proj_file
    )


def test_convert_keeps_an_existing_image_token(sources, tmp_path):
    """A LLaMA directory whose tokenizer already has <image> (our word-level one): no resize."""
    from transformers import LlamaConfig, LlamaForCausalLM

    twin = build_twin("minigpt4", WORDS, hidden_size=D_LLM, num_layers=2)
    llama_dir = tmp_path / "llama"
    config = LlamaConfig(**{**twin.text_config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    LlamaForCausalLM(config).save_pretrained(llama_dir)
    twin.tokenizer.save_pretrained(llama_dir)
    root = sources["root"]
    out = convert_minigpt4(root / "blip2", llama_dir, root / "proj.pth", tmp_path / "out")
    bb = load_backbone(out)
    assert bb.image_token_id == 4 and bb.model.get_input_embeddings().num_embeddings == len(
        twin.tokenizer
    )


def test_convert_errors(sources, tmp_path):
    root = sources["root"]
    blip2, llama = root / "blip2", root / "llama"
    bad = tmp_path / "bad.pth"
    torch.save(
        {"llama_proj.weight": torch.zeros(D_Q, D_LLM), "llama_proj.bias": torch.zeros(D_LLM)}, bad
    )
    with pytest.raises(ConversionError, match=r"expected weight \(96, 32\)") as err:
        convert_minigpt4(blip2, llama, bad, tmp_path / "o1")
    assert str(bad) in str(err.value)

    missing = tmp_path / "missing.pth"
    torch.save({"llama_proj.weight": torch.zeros(D_LLM, D_Q)}, missing)
    with pytest.raises(ConversionError, match="llama_proj.bias"):
        load_projection(missing)

    pickled = tmp_path / "pickled.pth"
    torch.save({"llama_proj.weight": object()}, pickled)
    with pytest.raises(ConversionError, match="weights-only"):
        load_projection(pickled)

    with pytest.raises(ConversionError, match="model_type is 'blip-2', expected 'llama'"):
        convert_minigpt4(blip2, blip2, root / "proj.pth", tmp_path / "o2")
    with pytest.raises(ConversionError, match="no such directory"):
        convert_minigpt4(tmp_path / "nope", llama, root / "proj.pth", tmp_path / "o3")

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert_minigpt4(blip2, llama, root / "proj.pth", taken)
    assert not any(p.name.startswith(".taken.tmp") for p in tmp_path.iterdir())


def test_cli(sources, tmp_path, capsys):
    root = sources["root"]
    out = tmp_path / "cli"
    main(
        [
            "--blip2",
            str(root / "blip2"),
            "--llama",
            str(root / "llama"),
            "--proj",
            str(root / "proj.pth"),
            "--out",
            str(out),
        ]
    )
    assert "wrote" in capsys.readouterr().out
    assert isinstance(load_backbone(out), MiniGPT4Backbone)
