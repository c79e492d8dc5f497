"""Twin pretraining, end to end on the tiny world with a handful of steps (a smoke run, not a
quality run), the cache, and ``liveedit backbone info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from liveedit.backbones import load_backbone
from liveedit.backbones.pretrain import (
    GroupSampler,
    PretrainConfig,
    cache_key,
    ensure_twin,
    evaluate_corpus,
)
from liveedit.cli import main
from liveedit.config import load_config


def smoke_config(world: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        None,
        [
            f"world={world}",
            f"out={out}",
            "arch=llava-1.5",
            "twin.hidden_size=32",
            "twin.num_layers=2",
            "vision.steps=3",
            "vision.bridge_steps=2",
            "vision.batch_size=8",
            "language.steps=4",
            "language.batch_size=8",
            "eval_every=2",
            "eval_examples=40",
            "tracking.enabled=false",
            *extra,
        ],
    )


def test_group_sampler_follows_weights_and_cycles() -> None:
    tasks = ["text_fact"] * 3 + ["vqa_colour"] * 50
    sampler = GroupSampler(tasks, {"text_fact": 0.5, "vqa": 0.5}, seed=0)
    draws = sampler.draw(600)
    facts = [i for i in draws if i < 3]
    assert 240 < len(facts) < 360  # ~50% although text facts are 6% of the corpus
    assert sorted(facts[:3]) == [0, 1, 2]  # one shuffled pass before any repeat
    with pytest.raises(ValueError, match=r"no corpus task in group\(s\) \['knowledge'\]"):
        GroupSampler(tasks, {"knowledge": 1.0}, seed=0)


def test_group_sampler_scales_weights_from_the_configured_ones() -> None:
    tasks = ["text_fact"] * 10 + ["vqa_colour"] * 10 + ["caption"] * 10
    sampler = GroupSampler(tasks, {"text_fact": 1.0, "vqa": 1.0, "caption": 2.0}, seed=0)
    sampler.scale({"caption": 0.0})
    assert all(i < 20 for i in sampler.draw(200))  # no caption drawn at weight 0
    sampler.scale({"caption": 0.25, "vqa": 0.5})  # from the configured weights, not compounded
    assert dict(zip(sampler.groups, sampler.weights, strict=True)) == {
        "caption": 0.5,
        "text_fact": 1.0,
        "vqa": 0.5,
    }
    sampler.scale({})
    assert sampler.weights == [2.0, 1.0, 1.0]


def test_pretrain_saves_a_loadable_twin_and_reuses_the_cache(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("LIVEEDIT_CACHE", str(tmp_path / "cache"))
    config = smoke_config(tiny_world, tmp_path / "twin")
    first = ensure_twin(config)
    assert not first.cached and first.out == tmp_path / "twin"
    assert first.steps >= 7  # 3 + 2 vision steps + at least 2 language steps
    info = json.loads((tmp_path / "twin" / "liveedit_backbone.json").read_text())
    pre = info["metadata"]["pretraining"]
    assert pre["cache_key"] == cache_key(config)
    assert set(pre["reached_at"]) == {"vqa", "caption", "knowledge", "text_fact"}
    assert set(pre["accuracy"]) >= {"vqa", "caption", "knowledge", "text_fact"}
    curve = json.loads((tmp_path / "twin" / "pretrain_curve.json").read_text())
    for key in ("tower_probe_loss", "bridge_probe_loss", "loss"):
        assert any(key in row for row in curve), key
    evaluations = [row for row in curve if "heldout/vqa" in row]
    assert evaluations and all(row["seconds"] > 0 for row in evaluations)

    backbone = load_backbone(tmp_path / "twin")
    assert backbone.hidden_size == 32 and backbone.num_layers == 2
    # the recorded accuracy is what the saved model scores on the held-out corpus
    from liveedit.backbones.pretrain import _ImageCache, _read_corpus, _stratified

    heldout = _stratified(_read_corpus(tiny_world / "corpus" / "heldout.jsonl"), 40, 0)
    again = evaluate_corpus(backbone, heldout, _ImageCache(tiny_world / "images"))
    assert again["vqa"] == pytest.approx(pre["accuracy"]["vqa"], abs=1e-4)

    second = ensure_twin(smoke_config(tiny_world, tmp_path / "copy"))
    assert second.cached and (tmp_path / "copy" / "model.safetensors").is_file()
    changed = ensure_twin(smoke_config(tiny_world, tmp_path / "other", "seed=1"))
    assert not changed.cached

    assert main(["backbone", "info", str(tmp_path / "twin")]) == 0
    out = capsys.readouterr().out
    assert "llava-1.5" in out and "num_vision_tokens" in out and "pretraining" in out


def test_prompt_loss_equals_a_direct_next_token_loop() -> None:
    """The prompt-token loss is the mean over every prompt token that has a predecessor of
    -log p(token | logits one position earlier), whatever the padding side and with or without
    an image."""
    from PIL import Image

    from liveedit.backbones.pretrain import prompt_loss
    from liveedit.backbones.twins import build_twin

    words = "what colour is the red square a blue circle answer".split()
    images = [Image.new("RGB", (48, 48), "red"), None, Image.new("RGB", (48, 48), "blue")]
    prompts = ["what colour is the square", "the red circle is", "what is a blue"]
    targets = ["red", "a blue circle", "circle"]
    for arch, side in (("llava-1.5", "right"), ("blip2-opt", "left"), ("minigpt4", "right")):
        twin = build_twin(arch, words, seed=0, hidden_size=32, num_layers=2)
        batch = twin.build_inputs(images, prompts, targets, padding_side=side)
        with torch.no_grad():
            logits = twin.forward(batch)
            got = prompt_loss(batch, logits)
        terms = []
        for i, spans in enumerate(batch.spans):
            start, end = spans.prompt
            for t in range(max(start, 1), end):
                logp = torch.log_softmax(logits[i, t - 1].float(), dim=-1)
                terms.append(-logp[batch.input_ids[i, t]])
        want = torch.stack(terms).mean()
        assert len(terms) == sum(len(p.split()) for p in prompts)  # BOS precedes every prompt
        assert got.item() == pytest.approx(want.item(), rel=1e-5), (arch, side)


def test_twin_init_std_reaches_the_lm_weights() -> None:
    from liveedit.backbones.twins import build_twin, twin_spec

    for arch in ("llava-1.5", "blip2-opt"):
        for std in (0.02, 0.08):
            twin = build_twin(arch, ["a", "b"], seed=0, hidden_size=64, init_std=std)
            weight = twin.decoder_layers[0].self_attn.q_proj.weight
            assert weight.std().item() == pytest.approx(std, rel=0.05), (arch, std)
    with pytest.raises(ValueError, match="init_std=0 must be > 0"):
        twin_spec(init_std=0)


def test_blip2_family_twins_start_with_a_live_vit_and_distinct_queries() -> None:
    """HF's BLIP-2 classes assume a checkpoint: vision initializer_range 1e-10 and zero query
    tokens. A twin built from them must not inherit that (nine equal queries stay equal under
    training, and the LM would see one pooled image token nine times)."""
    from PIL import Image

    from liveedit.backbones.twins import QFORMER_INIT_STD, build_twin

    for arch in ("blip2-opt", "minigpt4"):
        twin = build_twin(arch, ["a", "b"], seed=0, hidden_size=64)
        queries = twin.model.query_tokens
        assert queries.std().item() == pytest.approx(QFORMER_INIT_STD, rel=0.15)
        patch = twin.vision_tower.embeddings.patch_embedding.weight
        assert patch.std().item() == pytest.approx(QFORMER_INIT_STD, rel=0.15)
        images = [Image.new("RGB", (48, 48), c) for c in ("red", "blue")]
        with torch.no_grad():
            feats = twin.image_features(twin.pixel_values(images))
        assert feats.shape == (2, 9, 64)
        assert (feats[:, 0] - feats[:, 1]).abs().max() > 1e-3  # the queries differ
        assert (feats[0] - feats[1]).abs().max() > 1e-4  # and so do the images


def test_pretrain_with_the_prompt_loss_logs_both_losses(tiny_world: Path, tmp_path: Path) -> None:
    from liveedit.backbones.pretrain import pretrain

    torch.set_num_threads(1)
    config = smoke_config(
        tiny_world, tmp_path / "twin", "language.prompt_loss_weight=0.5", "vision.steps=0"
    )
    result = pretrain(config)
    rows = [row for row in result.curve if "loss" in row]
    assert len(rows) == 4
    # total = answer loss + 0.5 * prompt loss, and the prompt loss is positive
    assert all(row["total_loss"] > row["loss"] for row in rows)


def test_time_to_targets_is_the_first_evaluation_at_or_above_each_target() -> None:
    from liveedit.backbones.pretrain import time_to_targets

    curve = [
        {"step": 10, "loss": 1.0},
        {"step": 99, "seconds": 5.0, "heldout/vqa": 0.90, "heldout/caption": 0.86},
        {"step": 199, "seconds": 9.5, "heldout/vqa": 0.95, "heldout/caption": 0.80},
        {"step": 299, "seconds": 14.0, "heldout/vqa": 0.97, "heldout/caption": 0.90},
    ]
    got = time_to_targets(curve, {"vqa": 0.95, "caption": 0.85, "knowledge": 0.85})
    assert got == {
        "vqa": {"step": 199, "seconds": 9.5},
        "caption": {"step": 99, "seconds": 5.0},
        "knowledge": None,
    }


def test_anneal_factor_decays_over_the_end_of_the_budget() -> None:
    from liveedit.backbones.pretrain import anneal_factor

    assert anneal_factor(0.9, 0.0) == 1.0  # off
    assert anneal_factor(0.5, 0.4) == 1.0 and anneal_factor(0.6, 0.4) == 1.0
    assert anneal_factor(0.8, 0.4) == pytest.approx(1 - 0.9 * 0.5)  # half-way down: 0.55
    assert anneal_factor(1.0, 0.4) == pytest.approx(0.1)
    assert anneal_factor(1.3, 0.4) == pytest.approx(0.1)  # past the budget: the floor
    assert anneal_factor(0.5, 1.0, floor=0.0) == pytest.approx(0.5)


def test_vision_stage_trains_the_tower_then_the_bridge() -> None:
    """The tower phase moves the vision tower only; the bridge phase then moves the bridge (BLIP-2:
    the Q-Former, its query tokens and the projection; LLaVA: the projector) with the tower
    frozen; the LM never moves. Checked phase by phase on the real twins."""
    from liveedit.backbones.base import Backbone
    from liveedit.backbones.pretrain import VisionStage, vision_stage
    from liveedit.backbones.twins import build_twin

    torch.set_num_threads(1)
    bridges = {
        "blip2-opt": ("qformer", "query_tokens", "language_projection"),
        "llava-1.5": ("multi_modal_projector",),
    }
    towers = {"blip2-opt": "vision_model", "llava-1.5": "vision_tower"}
    for arch, bridge in bridges.items():
        twin = build_twin(arch, ["red", "square"], seed=0, hidden_size=32, num_layers=2)

        def moved_by(
            stage: VisionStage, twin: Backbone = twin
        ) -> tuple[set[str], list[dict[str, float]]]:
            before = {n: p.detach().clone() for n, p in twin.model.named_parameters()}
            curve = vision_stage(twin, stage, seed=0)
            assert all(p.requires_grad is False for p in twin.model.parameters())
            names = twin.model.named_parameters()
            return {n for n, p in names if not torch.equal(p, before[n])}, curve

        moved, curve = moved_by(VisionStage(steps=2, bridge_steps=0, batch_size=4))
        assert [r["step"] for r in curve] == [0, 1] and "tower_probe_cell" in curve[0]
        assert any(towers[arch] in n for n in moved)
        assert not any(part in n for n in moved for part in (*bridge, "language_model"))

        moved, curve = moved_by(VisionStage(steps=1, bridge_steps=2, batch_size=4))
        assert [r["step"] for r in curve] == [0, 1, 2]
        assert set(curve[2]) == {"step", "bridge_probe_loss"} | {
            f"bridge_probe_{k}" for k in ("shape", "colour", "size")
        }
        for part in bridge:
            assert any(part in n for n in moved), (arch, part)
        assert not any("language_model" in n for n in moved)
        # the tower moved in its own phase only: rerun the bridge phase alone
        moved, _ = moved_by(VisionStage(steps=0, bridge_steps=2, batch_size=4))
        assert not any(towers[arch] in n for n in moved) and any(bridge[0] in n for n in moved)


def test_bridge_probes_need_one_vision_token_per_cell() -> None:
    from liveedit.backbones.pretrain import VisionStage, vision_stage
    from liveedit.backbones.twins import build_twin

    twin = build_twin(
        "blip2-opt", ["red"], seed=0, hidden_size=32, num_layers=2, num_query_tokens=4
    )
    with pytest.raises(ValueError, match="one vision token per cell .9.; blip2-opt has 4"):
        vision_stage(twin, VisionStage(steps=0, bridge_steps=1, batch_size=2), seed=0)
