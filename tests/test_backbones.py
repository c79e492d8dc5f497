"""Backbone adapters on tiny random twins (built from configs in seconds; never pretrained)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from liveedit.backbones import (  # noqa: E402
    BACKBONE_JSON,
    Backbone,
    BackboneError,
    Blip2OptBackbone,
    LlavaBackbone,
    MiniGPT4Backbone,
    build_tokenizer,
    build_twin,
    describe,
    load_backbone,
)

ARCHS = ("blip2-opt", "llava-1.5", "minigpt4")
WORDS = (
    "What colour is the object? The answer is: red blue green circle square triangle "
    "How many objects are there? one two three left right nq question: who wrote the book "
    "a small big scene shows"
).split()
SMALL = {"hidden_size": 64, "num_layers": 4}  # keeps the per-test cost at milliseconds


def noise_image(seed: int, size: int = 48) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


IMAGES = [noise_image(1), None, noise_image(2), None]
PROMPTS = [
    "What colour is the object? The answer is:",
    "nq question: who wrote the book?",
    "How many objects are there?",
    "who wrote",
]
TARGETS = ["red", "the book", "two", "a small scene shows"]


@pytest.fixture(scope="module", params=ARCHS)
def twin(request) -> Backbone:
    return build_twin(request.param, WORDS, seed=0, **SMALL)


def tokens(bb: Backbone, ids) -> list[str]:
    return bb.tokenizer.convert_ids_to_tokens(ids.tolist())


def non_pad_logits(logits, batch, i):
    return logits[i][batch.attention_mask[i].bool()]


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_roundtrip_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(["object?", "The", "answer", "red"])
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<image>",
    ]
    ids = tok("The object? red zebra")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "The", "object", "?", "red", "<unk>"]
    assert tok("<image>The", add_special_tokens=False)["input_ids"] == [
        4,
        tok.convert_tokens_to_ids("The"),
    ]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("The object? red zebra")["input_ids"] == ids
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    assert build_tokenizer(["b", "a"]).get_vocab() == build_tokenizer(["a", "b"]).get_vocab()


# -- construction and accessors ----------------------------------------------------------------


def test_twin_shapes_accessors_and_frozen(twin):
    assert twin.hidden_size == 64 and twin.num_layers == 4 and twin.num_vision_tokens == 9
    assert isinstance(twin.decoder_layers, torch.nn.ModuleList)
    assert twin.last_decoder_layer is twin.decoder_layers[-1]
    assert not any(p.requires_grad for p in twin.model.parameters())
    assert not twin.model.training
    bridge = type(twin.bridge).__name__
    assert bridge == (
        "LlavaMultiModalProjector" if twin.arch == "llava-1.5" else "Blip2QFormerModel"
    )
    assert len(list(twin.bridge_parameters())) > 0
    assert len(list(twin.vision_tower_parameters())) > 0
    twin.unfreeze(twin.bridge)
    try:
        trainable = {id(p) for p in twin.model.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in twin.bridge.parameters()}
    finally:
        twin.freeze()
    info = describe(twin)
    assert info["arch"] == twin.arch and info["hidden_size"] == 64 and info["num_layers"] == 4
    assert info["num_vision_tokens"] == 9 and info["num_parameters"] > 0


def test_build_twin_overrides_and_errors():
    bb = build_twin("llava-1.5", WORDS, hidden_size=96, num_layers=6, num_heads=4)
    assert (bb.hidden_size, bb.num_layers) == (96, 6)
    assert isinstance(bb, LlavaBackbone)
    with pytest.raises(TypeError, match="unknown twin settings"):
        build_twin("blip2-opt", WORDS, hidden_sise=64)
    with pytest.raises(ValueError, match="multiple of heads"):
        build_twin("blip2-opt", WORDS, hidden_size=66)
    with pytest.raises(KeyError, match="unknown twin arch"):
        build_twin("gpt4", WORDS)


def test_build_twin_is_deterministic_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    a = build_twin("minigpt4", WORDS, seed=3, **SMALL)
    assert torch.equal(state, torch.random.get_rng_state())
    b = build_twin("minigpt4", WORDS, seed=3, **SMALL)
    c = build_twin("minigpt4", WORDS, seed=4, **SMALL)
    wa, wb, wc = (x.model.language_projection.weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# -- inputs and spans --------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_spans_mixed_batch(twin, padding_side):
    batch = twin.build_inputs(IMAGES, PROMPTS, TARGETS, padding_side=padding_side)
    tok = twin.tokenizer
    assert batch.input_ids.shape[0] == 4 and batch.pixel_values.shape[0] == 2
    assert batch.has_image.tolist() == [True, False, True, False]
    for i, spans in enumerate(batch.spans):
        ids = batch.input_ids[i]
        assert tokens(twin, ids[slice(*spans.prompt)]) == tok.tokenize(PROMPTS[i])
        assert tokens(twin, ids[slice(*spans.target)]) == tok.tokenize(TARGETS[i])
        decoded = tok.decode(ids[slice(*spans.target)])
        assert decoded.split() == TARGETS[i].split()
        assert spans.target[0] == spans.prompt[1]
        n_image = int((ids == twin.image_token_id).sum())
        if IMAGES[i] is None:
            assert spans.vision is None and n_image == 0
        else:
            start, end = spans.vision
            assert end - start == twin.num_vision_tokens == n_image
            assert (ids[start:end] == twin.image_token_id).all()
        # bos sits right before the prompt (BLIP-2) or before the vision span (LLaVA)
        bos = spans.vision[0] - 1 if spans.vision and not twin.vision_first else spans.prompt[0] - 1
        assert ids[bos] == tok.bos_token_id
        first = spans.vision[0] if spans.vision and twin.vision_first else bos
        real = batch.attention_mask[i].nonzero().flatten()
        assert (real[0].item(), real[-1].item() + 1) == (first, spans.target[1])
        if padding_side == "left":
            assert spans.target[1] == batch.seq_len
        assert batch.position_ids[i, real].tolist() == list(range(len(real)))


def test_batch_logits_equal_single_example_logits(twin):
    """Batching, padding side and image/no-image neighbours do not change an example's logits."""
    with torch.no_grad():
        singles = [
            twin.forward(twin.build_inputs([im], [p], [t]))[0]
            for im, p, t in zip(IMAGES, PROMPTS, TARGETS, strict=True)
        ]
        for side in ("right", "left"):
            batch = twin.build_inputs(IMAGES, PROMPTS, TARGETS, padding_side=side)
            logits = twin.forward(batch)
            for i, single in enumerate(singles):
                torch.testing.assert_close(
                    non_pad_logits(logits, batch, i), single, atol=1e-4, rtol=1e-4
                )


def test_forward_matches_hf_native_path(twin):
    """For one image example, the adapter's inputs_embeds path equals the HF model's own forward
    on the processor's output (image tokens expanded by the processor)."""
    image, prompt, target = IMAGES[0], PROMPTS[0], TARGETS[0]
    text = f"{prompt} {target}"
    if twin.arch == "llava-1.5":
        text = "<image>" + text
    native_inputs = twin.processor(images=image, text=text, return_tensors="pt")
    batch = twin.build_inputs([image], [prompt], [target])
    assert batch.input_ids.tolist() == native_inputs["input_ids"].tolist()
    with torch.no_grad():
        native = twin.model(**native_inputs).logits
        ours = twin.forward(batch)
    torch.testing.assert_close(ours, native, atol=1e-5, rtol=1e-5)


def test_build_inputs_errors(twin):
    with pytest.raises(BackboneError, match="batch sizes differ"):
        twin.build_inputs([None], ["a", "b"], ["x", "y"])
    with pytest.raises(BackboneError, match="has no tokens"):
        twin.build_inputs([None], ["who wrote"], [""])
    with pytest.raises(ValueError, match="padding_side"):
        twin.build_inputs([None], ["who"], ["two"], padding_side="middle")
    with pytest.raises(BackboneError, match="positions"):
        twin.build_inputs([None], ["red " * 300], ["two"])


# -- scoring -----------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_score_equals_recomputation_from_logits(twin, padding_side):
    batch = twin.build_inputs(IMAGES, PROMPTS, TARGETS, padding_side=padding_side)
    with torch.no_grad():
        logits = twin.forward(batch)
    scores = twin.score(batch, logits=logits)
    logp = torch.log_softmax(logits.float(), -1)
    for i, spans in enumerate(batch.spans):
        start, end = spans.target
        target = batch.input_ids[i, start:end]
        expected_lp = torch.stack(
            [logp[i, t - 1, batch.input_ids[i, t]] for t in range(start, end)]
        )
        expected_argmax = logits[i, start - 1 : end - 1].argmax(-1)
        target_ids, argmax = scores.tokens(i)
        assert target_ids == target.tolist() and argmax == expected_argmax.tolist()
        n = end - start
        torch.testing.assert_close(scores.logprobs[i, :n], expected_lp)
        assert scores.mask[i].sum() == n
        acc = (expected_argmax == target).float().mean()
        torch.testing.assert_close(scores.token_accuracy[i], acc)
        torch.testing.assert_close(scores.mean_logprob[i], expected_lp.mean())
        torch.testing.assert_close(scores.logits[i, :n], logits[i, start - 1 : end - 1])
    torch.testing.assert_close(twin.score(batch).mean_logprob, scores.mean_logprob)


def test_score_is_differentiable_through_unfrozen_parts(twin):
    twin.unfreeze(twin.last_decoder_layer)
    try:
        batch = twin.build_inputs(IMAGES[:2], PROMPTS[:2], TARGETS[:2])
        twin.score(batch).nll.mean().backward()
        grads = [p.grad for p in twin.last_decoder_layer.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    finally:
        twin.model.zero_grad(set_to_none=True)
        twin.freeze()


def test_score_needs_targets(twin):
    with pytest.raises(BackboneError, match="targets"):
        twin.score(twin.build_inputs([None], ["who"], None))


# -- hooks -------------------------------------------------------------------------------------


def test_layer_hook_changes_logits_and_is_removed(twin):
    batch = twin.build_inputs(IMAGES, PROMPTS, TARGETS, padding_side="left")
    seen = []

    def shift(hidden):
        seen.append(tuple(hidden.shape))
        return hidden + 1.0

    with torch.no_grad():
        before = twin.forward(batch)
        with twin.layer_hook(1, shift):
            edited = twin.forward(batch)
        after = twin.forward(batch)
        assert seen == [(4, batch.seq_len, twin.hidden_size)]
        assert not torch.allclose(edited, before)
        torch.testing.assert_close(after, before, atol=0, rtol=0)

        with pytest.raises(RuntimeError, match="boom"), twin.layer_hook(-1, shift):
            twin.forward(batch)
            raise RuntimeError("boom")
        torch.testing.assert_close(twin.forward(batch), before, atol=0, rtol=0)
        assert all(not layer._forward_hooks for layer in twin.decoder_layers)


def test_layer_hook_error_in_fn_removes_hook(twin):
    batch = twin.build_inputs([None], ["who wrote"], ["the book"])

    def bad(hidden):
        raise ValueError("bad hook")

    with pytest.raises(ValueError, match="bad hook"), twin.layer_hook(0, bad):
        twin.forward(batch)
    assert all(not layer._forward_hooks for layer in twin.decoder_layers)
    with pytest.raises(ValueError, match="shape"), twin.layer_hook(0, lambda h: h[:, :1]):
        twin.forward(batch)
    with pytest.raises(IndexError), twin.layer_hook(twin.num_layers, lambda h: h):
        pass


def test_hidden_states_show_the_edit(twin):
    """The hook is prepended, so recorded hidden states (ours and HF's) show the edited value."""
    batch = twin.build_inputs(IMAGES[:2], PROMPTS[:2], TARGETS[:2])
    with torch.no_grad(), twin.layer_hook(2, lambda h: h * 0.0 + 3.0):
        _, hidden = twin.forward_with_hidden(batch, [2, 3])
        lm = twin.model.language_model if twin.arch != "llava-1.5" else twin.model.model
        embeds = twin.inputs_embeds(batch)
        hf = lm(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
        ).hidden_states
    assert torch.all(hidden[2] == 3.0) and hidden[3].shape == (2, batch.seq_len, twin.hidden_size)
    assert torch.all(hf[3] == 3.0)  # hidden_states[0] are the embeddings


# -- generation --------------------------------------------------------------------------------


def test_generate_greedy_and_batch_consistent(twin):
    prompts = PROMPTS[:3]
    images = IMAGES[:3]
    texts = twin.generate(images, prompts, max_new_tokens=3)
    assert isinstance(texts, list) and len(texts) == 3 and all(isinstance(t, str) for t in texts)
    ids = twin.generate_ids(images, prompts, max_new_tokens=3)
    for i in range(3):
        single = twin.generate_ids(images[i : i + 1], prompts[i : i + 1], max_new_tokens=3)[0]
        assert ids[i] == single
        batch = twin.build_inputs(images[i : i + 1], prompts[i : i + 1])
        with torch.no_grad():
            first = twin.forward(batch)[0, -1].argmax().item()
        if first != twin.tokenizer.eos_token_id:
            assert ids[i][0] == first


# -- save / load -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    dirs = {}
    for arch in ARCHS:
        bb = build_twin(arch, WORDS, seed=1, **SMALL)
        path = tmp_path_factory.mktemp(arch.replace(".", ""))
        bb.save_pretrained(path, metadata={"pretraining": {"accuracy": {"colour": 0.5}}})
        dirs[arch] = (bb, path)
    return dirs


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip_identical_logits(saved, arch):
    original, path = saved[arch]
    loaded = load_backbone(path)
    assert type(loaded) is type(original) and loaded.arch == arch
    batch = original.build_inputs(IMAGES, PROMPTS, TARGETS, padding_side="left")
    batch2 = loaded.build_inputs(IMAGES, PROMPTS, TARGETS, padding_side="left")
    assert torch.equal(batch.input_ids, batch2.input_ids)
    assert torch.equal(batch.pixel_values, batch2.pixel_values)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward(batch2), original.forward(batch), atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    info = describe(loaded)
    assert info["metadata"]["pretraining"]["accuracy"]["colour"] == 0.5
    assert info["metadata"]["twin"]["seed"] == 1 and info["path"] == str(path)
    saved_info = json.loads((path / BACKBONE_JSON).read_text())
    assert saved_info["arch"] == arch and saved_info["num_vision_tokens"] == 9
    cls = {"blip2-opt": Blip2OptBackbone, "llava-1.5": LlavaBackbone, "minigpt4": MiniGPT4Backbone}
    assert type(cls[arch].from_pretrained(path)) is cls[arch]
    assert type(Backbone.from_pretrained(path)) is cls[arch]


@pytest.mark.parametrize(
    "cls, path_arch",
    [(Blip2OptBackbone, "llava-1.5"), (LlavaBackbone, "minigpt4"), (MiniGPT4Backbone, "blip2-opt")],
)
def test_loading_the_wrong_architecture_is_an_error(saved, cls, path_arch):
    path = saved[path_arch][1]
    with pytest.raises(BackboneError, match=f"holds a '{path_arch}' backbone") as err:
        cls.from_pretrained(path)
    assert str(path) in str(err.value) and cls.arch in str(err.value)
    with pytest.raises(BackboneError, match="expected"):
        load_backbone(path, arch=cls.arch)


@pytest.mark.parametrize(
    "remove, message",
    [
        ("config.json", "missing the model config"),
        ("model.safetensors", "missing safetensors model weights"),
        ("tokenizer.json", "missing the tokenizer vocabulary"),
        ("tokenizer_config.json", "missing the tokenizer config"),
        ("processor_config.json", "missing the processor"),
    ],
)
def test_missing_files_are_named(saved, tmp_path, remove, message):
    copy = tmp_path / "bb"
    shutil.copytree(saved["blip2-opt"][1], copy)
    (copy / remove).unlink()
    with pytest.raises(BackboneError, match=message) as err:
        load_backbone(copy)
    assert str(copy) in str(err.value) and remove in str(err.value)


def test_unsupported_and_inconsistent_directories(saved, tmp_path):
    with pytest.raises(BackboneError, match="no such backbone directory"):
        load_backbone(tmp_path / "nowhere")
    # a plain LLaMA LM directory is not a VLLM
    copy = tmp_path / "llama"
    shutil.copytree(saved["minigpt4"][1], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(
        json.dumps({**config["text_config"], "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(BackboneError, match="unsupported architecture.*LlamaForCausalLM"):
        load_backbone(copy)
    # liveedit_backbone.json disagrees with the config
    copy2 = tmp_path / "mismatch"
    shutil.copytree(saved["blip2-opt"][1], copy2)
    info = json.loads((copy2 / BACKBONE_JSON).read_text())
    (copy2 / BACKBONE_JSON).write_text(json.dumps({**info, "arch": "minigpt4"}))
    with pytest.raises(BackboneError, match="says arch 'minigpt4'"):
        load_backbone(copy2)
    # weights of another size than the config
    copy3 = tmp_path / "resized"
    shutil.copytree(saved["llava-1.5"][1], copy3)
    config = json.loads((copy3 / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (copy3 / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=str(copy3)):
        load_backbone(copy3)


@pytest.mark.parametrize("arch", ARCHS)
def test_loading_a_plain_hf_directory(saved, tmp_path, arch):
    """A directory as users bring real weights: no liveedit_backbone.json; older BLIP-2 configs
    also lack the image token index, and the tokenizer's <image> id is used."""
    copy = tmp_path / "plain"
    shutil.copytree(saved[arch][1], copy)
    (copy / BACKBONE_JSON).unlink()
    loaded = load_backbone(copy)
    assert loaded.arch == arch and loaded.metadata == {}
    batch = loaded.build_inputs(IMAGES, PROMPTS, TARGETS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward(batch), saved[arch][0].forward(batch))

    config = json.loads((copy / "config.json").read_text())
    del config["image_token_index"]
    (copy / "config.json").write_text(json.dumps(config))
    if arch == "llava-1.5":  # LlavaConfig defaults to 32000, which the tokenizer contradicts
        with pytest.raises(BackboneError, match="<image> id is 4 but .* is 32000"):
            load_backbone(copy)
    else:
        assert load_backbone(copy).image_token_id == 4


def test_missing_tensors_are_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "partial"
    shutil.copytree(saved["minigpt4"][1], copy)
    state = load_file(copy / "model.safetensors")
    del state["language_projection.weight"]
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BackboneError, match="missing.*language_projection.weight") as err:
        load_backbone(copy)
    assert str(copy) in str(err.value)
